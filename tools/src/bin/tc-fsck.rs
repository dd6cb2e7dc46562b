//! tc-fsck: checks a tc data dir without a server and reports every
//! problem found, naming file, offset, LSN and object. Never writes to it.
//!
//! Exit code: 0 clean, 1 problems found, 2 the tool itself failed (the
//! directory does not exist, a server holds it, bad arguments).
//! Output: the text report on stdout (last line `clean` or `N problems`),
//! or with `--json` one JSON object
//! `{"clean", "problems": [{"file","offset","lsn","object","what"}], "notes", "counts"}`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "tc-fsck",
    version,
    about = "Check a tc data dir (offline, read-only) and report every problem"
)]
struct Cli {
    /// The data dir (holds CHECKPOINT, objects.tbl, wal/, segments/).
    data_dir: PathBuf,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
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
    let report = match tc_tools::fsck::check(&cli.data_dir) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tc-fsck: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
