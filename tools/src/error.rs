//! Failures of the tools themselves (exit code 2), as opposed to problems
//! found in the data dir (`fsck::Finding`, exit code 1).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    #[error("{}: not a directory (or it does not exist)", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is locked: a server has this data dir open; stop it first (the tools read files a running server changes)",
        path.display()
    )]
    InUse { path: PathBuf },
    /// The thing asked for cannot be read because the data dir is damaged
    /// there (run `tc-fsck`).
    #[error("{0}")]
    Damaged(String),
}

impl ToolError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ToolError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
