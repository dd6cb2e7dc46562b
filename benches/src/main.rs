//! tc-bench: the benchmark driver for tc.
//!
//! Owns: the command line (one subcommand per workload) and dispatch; the
//! exit code. Not: running a workload (`wal_bench.rs`, `store_commit.rs`,
//! `store_read.rs`, `recovery.rs`, `write_amp.rs`, `server_bench.rs`: the
//! network workloads, `baselines.rs`: Redis and PostgreSQL; what the store workloads
//! share is in `store_common.rs`), measuring the disk (`fsync_probe.rs`),
//! printing results (`report.rs`).
//! Output contract: results go to stdout (a table, or one JSON object per
//! line with `--json`); progress and warnings go to stderr.

mod baselines;
mod cpu;
mod fsync_probe;
mod recovery;
mod report;
mod server_bench;
mod store_commit;
mod store_common;
mod store_read;
mod wal_bench;
mod write_amp;

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
    /// Object store commits: committer threads each updating their own object.
    StoreCommit(store_commit::StoreCommitArgs),
    /// Object store random reads with a cache smaller than the heap.
    StoreRead(store_read::StoreReadArgs),
    /// Object store recovery: time to replay a WAL full of transactions.
    Recovery(recovery::RecoveryArgs),
    /// Object store write amplification under updates, checkpoints and cleaning.
    WriteAmp(write_amp::WriteAmpArgs),
    /// The same workloads against Redis and PostgreSQL servers it starts.
    Baseline(baselines::BaselineArgs),
    /// tc-server: N sessions, each writer committing small field-level
    /// transactions under its own lock (`--vs redis,postgres` to compare).
    ServerCommit(server_bench::ServerBenchArgs),
    /// tc-server: every writer increments one shared counter under one
    /// cluster lock (contended).
    Counter(server_bench::ServerBenchArgs),
    /// tc-server: writers fault random objects in.
    Read(server_bench::ServerBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Wal(args) => wal_bench::run(&args).map_err(Into::into),
        Command::StoreCommit(args) => store_commit::run(&args).map_err(Into::into),
        Command::StoreRead(args) => store_read::run(&args).map_err(Into::into),
        Command::Recovery(args) => recovery::run(&args).map_err(Into::into),
        Command::WriteAmp(args) => write_amp::run(&args).map_err(Into::into),
        Command::Baseline(args) => baselines::run_bench(&args).map_err(Into::into),
        Command::ServerCommit(args) => {
            server_bench::run(server_bench::TcWorkload::ServerCommit, &args).map_err(Into::into)
        }
        Command::Counter(args) => {
            server_bench::run(server_bench::TcWorkload::Counter, &args).map_err(Into::into)
        }
        Command::Read(args) => {
            server_bench::run(server_bench::TcWorkload::Read, &args).map_err(Into::into)
        }
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
            other => panic!("parsed as {other:?}"),
        })
    }

    fn parse_command(argv: &[&str]) -> Result<Command, clap::Error> {
        let argv = ["tc-bench"].iter().chain(argv);
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    #[test]
    fn store_workload_defaults_match_the_documented_commands() {
        let Command::StoreCommit(args) = parse_command(&["store-commit"]).expect("parse") else {
            panic!("not store-commit");
        };
        assert_eq!(args.committers, vec![1, 16, 64]);
        assert_eq!((args.fields.min, args.fields.max), (1, 8));
        assert_eq!((args.seconds, args.warmup_seconds), (5.0, 1.0));
        assert_eq!(args.rounds, 5);
        let Command::StoreRead(args) = parse_command(&["store-read"]).expect("parse") else {
            panic!("not store-read");
        };
        assert_eq!(args.objects, 10_000_000);
        assert_eq!(args.cache_fraction, 0.1);
        assert_eq!(args.readers, vec![1, 4]);
        let Command::Recovery(args) = parse_command(&["recovery"]).expect("parse") else {
            panic!("not recovery");
        };
        assert_eq!(args.wal_bytes, 1 << 30);
        let Command::WriteAmp(args) = parse_command(&["write-amp"]).expect("parse") else {
            panic!("not write-amp");
        };
        assert_eq!(args.objects, 100_000);
        assert_eq!(args.seconds, 10.0);
        assert_eq!(args.checkpoint_wal_bytes, 16 << 20);
        assert_eq!(args.data_segment_bytes, 4 << 20);
        assert_eq!(args.committers, 64);
    }

    #[test]
    fn store_workload_arguments_parse_and_bad_ones_name_the_flag() {
        let Command::Recovery(args) =
            parse_command(&["recovery", "--wal-bytes", "256MiB", "--json"]).expect("parse")
        else {
            panic!("not recovery");
        };
        assert_eq!(args.wal_bytes, 256 << 20);
        assert!(args.json);
        let cases: [(&[&str], &str); 5] = [
            (&["store-commit", "--fields", "0-8"], "--fields"),
            (&["store-commit", "--committers", "1,0"], "--committers"),
            (
                &["store-read", "--cache-fraction", "1.5"],
                "--cache-fraction",
            ),
            (&["recovery", "--wal-bytes", "12XB"], "--wal-bytes"),
            (&["write-amp", "--objects", "0"], "--objects"),
        ];
        for (argv, flag) in cases {
            let err = parse_command(argv).expect_err("must be rejected");
            assert!(err.to_string().contains(flag), "{argv:?}: {err}");
        }
    }

    #[test]
    fn server_workload_arguments_parse() {
        let Command::ServerCommit(args) = parse_command(&["server-commit"]).expect("parse") else {
            panic!("not server-commit");
        };
        assert_eq!((args.writers, args.sessions), (64, 4));
        assert!(args.vs.is_empty() && !args.json && !args.no_greedy);
        let Command::Counter(args) = parse_command(&[
            "counter",
            "--writers",
            "2",
            "--sessions",
            "2",
            "--vs",
            "redis,postgres",
            "--json",
        ])
        .expect("parse") else {
            panic!("not counter");
        };
        assert_eq!((args.writers, args.sessions), (2, 2));
        assert_eq!(
            args.vs,
            vec![baselines::Baseline::Redis, baselines::Baseline::Postgres]
        );
        assert!(args.json);
        let err = parse_command(&["read", "--vs", "mysql"]).expect_err("unknown baseline");
        assert!(err.to_string().contains("mysql"), "{err}");
    }

    #[test]
    fn baseline_arguments_parse_and_bad_ones_name_the_flag() {
        use baselines::{Baseline, Workload};
        let Command::Baseline(args) =
            parse_command(&["baseline", "--against", "redis"]).expect("parse")
        else {
            panic!("not baseline");
        };
        assert_eq!(args.against, vec![Baseline::Redis]);
        assert_eq!(args.workload, vec![Workload::Commit]);
        assert_eq!(args.writers, vec![64]);
        assert_eq!((args.seconds, args.warmup_seconds), (10.0, 2.0));
        assert_eq!(args.value_bytes, 64);
        assert!(!args.json);
        let Command::Baseline(args) = parse_command(&[
            "baseline",
            "--against",
            "redis",
            "--against",
            "postgres",
            "--workload",
            "counter",
            "--writers",
            "4",
            "--seconds",
            "1",
            "--warmup-seconds",
            "0",
            "--value-bytes",
            "128",
            "--json",
        ])
        .expect("parse") else {
            panic!("not baseline");
        };
        assert_eq!(args.against, vec![Baseline::Redis, Baseline::Postgres]);
        assert_eq!(args.workload, vec![Workload::Counter]);
        assert_eq!(args.writers, vec![4]);
        assert_eq!((args.seconds, args.warmup_seconds), (1.0, 0.0));
        assert_eq!(args.value_bytes, 128);
        assert!(args.json);
        let cases: [(&[&str], &str); 5] = [
            (&["baseline"], "--against"),
            (&["baseline", "--against", "mysql"], "--against"),
            (
                &["baseline", "--against", "redis", "--workload", "scan"],
                "--workload",
            ),
            (
                &["baseline", "--against", "redis", "--writers", "0"],
                "--writers",
            ),
            (
                &["baseline", "--against", "redis", "--seconds", "0"],
                "--seconds",
            ),
        ];
        for (argv, flag) in cases {
            let err = parse_command(argv).expect_err("must be rejected");
            assert!(err.to_string().contains(flag), "{argv:?}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_documented_command() {
        let args = parse(&[]).expect("defaults parse");
        assert_eq!(args.producers, vec![1, 16, 64, 256]);
        assert_eq!(args.backends(), vec![Backend::Uring, Backend::Portable]);
        assert_eq!(args.record_bytes, 64);
        assert_eq!(args.seconds, 5.0);
        assert_eq!(args.rounds, 5);
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
        let cases: [(&[&str], &str); 6] = [
            (&["--producers", "1,0,4"], "--producers"),
            (&["--rounds", "0"], "--rounds"),
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
