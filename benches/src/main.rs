//! tc-bench: the benchmark driver for tc.
//!
//! Owns: the command line (one subcommand per workload) and dispatch; the
//! exit code. Not: running a workload (`wal_bench.rs`), measuring the disk
//! (`fsync_probe.rs`), printing results (`report.rs`).
//! Output contract: results go to stdout (a table, or one JSON object per
//! line with `--json`); progress and warnings go to stderr.

mod fsync_probe;
mod report;
mod wal_bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tc-bench", about = "Benchmarks for tc", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// WAL group commit: producers appending durable records concurrently.
    Wal(wal_bench::WalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wal(args) => wal_bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tc-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use tc_wal::Backend;

    fn parse(args: &[&str]) -> Result<wal_bench::WalArgs, clap::Error> {
        let argv = ["tc-bench", "wal"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Wal(args) => args,
        })
    }

    #[test]
    fn defaults_match_the_documented_command() {
        let args = parse(&[]).expect("defaults parse");
        assert_eq!(args.producers, vec![1, 16, 64, 256]);
        assert_eq!(args.backends(), vec![Backend::Uring, Backend::Portable]);
        assert_eq!(args.record_bytes, 64);
        assert_eq!(args.seconds, 5.0);
        assert!(!args.json);
        assert!(args.dir.is_none());
    }

    #[test]
    fn comma_lists_parse_in_order() {
        let args = parse(&[
            "--producers",
            "256,1,16",
            "--backend",
            "portable,uring",
            "--record-bytes",
            "128",
            "--seconds",
            "0.25",
            "--json",
        ])
        .expect("parse");
        assert_eq!(args.producers, vec![256, 1, 16]);
        assert_eq!(args.backends(), vec![Backend::Portable, Backend::Uring]);
        assert_eq!(args.record_bytes, 128);
        assert_eq!(args.seconds, 0.25);
        assert!(args.json);
    }

    #[test]
    fn bad_values_are_rejected_naming_the_flag() {
        let cases: [(&[&str], &str); 5] = [
            (&["--producers", "1,0,4"], "--producers"),
            (&["--producers", "1,x"], "--producers"),
            (&["--backend", "uring,aio"], "--backend"),
            (&["--seconds", "0"], "--seconds"),
            (&["--record-bytes", "0"], "--record-bytes"),
        ];
        for (args, flag) in cases {
            let err = parse(args).expect_err("must be rejected");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::ValueValidation | ErrorKind::InvalidValue
                ),
                "{args:?}: {:?}",
                err.kind()
            );
            let message = err.to_string();
            assert!(message.contains(flag), "{args:?}: {message}");
        }
    }
}
