//! tc-dump: prints what a tc data dir holds, without a server and without
//! writing to it: roots, classes, one object, the graph under a root, WAL
//! records. Objects are shown as of the end of the log (table image plus
//! the WAL after the checkpoint).
//!
//! Exit code: 0 printed, 1 the object or root asked for does not exist (or
//! was deleted), 2 the tool failed (no such directory, a server holds it,
//! the object's image is damaged, bad arguments). Damage met on the way is
//! reported on stderr as warnings.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tc_heap_store::{Lsn, ObjectId};
use tc_tools::dump::{self, Format, Found};

#[derive(Debug, Parser)]
#[command(
    name = "tc-dump",
    version,
    about = "Print the contents of a tc data dir (offline, read-only)"
)]
struct Cli {
    /// The data dir (holds CHECKPOINT, objects.tbl, wal/, segments/).
    data_dir: PathBuf,
    /// JSON instead of text (one document; for `wal`, one object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Roots and the objects they name (checkpoint, then the WAL after it).
    Roots,
    /// Classes: id, name, kind, fields with slot numbers and kinds.
    Classes,
    /// One object: class, version, fields by name, or collection contents.
    Object {
        /// Object id (`5` or `@5`).
        #[arg(value_parser = dump::parse_object_id)]
        id: ObjectId,
    },
    /// The objects reachable from a root, as an indented tree.
    Graph {
        /// The root's name.
        root: String,
        /// Expand at most this many levels below the root.
        #[arg(long)]
        depth: Option<usize>,
    },
    /// WAL records with LSN, kind and decoded content.
    Wal {
        /// First LSN to print (decimal or 0x hex).
        #[arg(long, value_parser = dump::parse_lsn, default_value = "0")]
        from: Lsn,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let format = if cli.json { Format::Json } else { Format::Text };
    let mut warnings = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = dump::load(&cli.data_dir, &mut warnings).and_then(|view| match &cli.command {
        Command::Roots => dump::roots(&view, format, &mut out).map(|()| Found::Yes),
        Command::Classes => dump::classes(&view, format, &mut out).map(|()| Found::Yes),
        Command::Object { id } => dump::object(&view, *id, format, &mut out, &mut warnings),
        Command::Graph { root, depth } => {
            dump::graph(&view, root, *depth, format, &mut out, &mut warnings)
        }
        Command::Wal { from, limit } => {
            dump::wal(&view, *from, *limit, format, &mut out, &mut warnings).map(|()| Found::Yes)
        }
    });
    let _ = out.flush();
    for warning in &warnings {
        eprintln!("tc-dump: warning: {warning}");
    }
    match result {
        Ok(Found::Yes) => ExitCode::SUCCESS,
        Ok(Found::No) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tc-dump: {e}");
            ExitCode::from(2)
        }
    }
}
