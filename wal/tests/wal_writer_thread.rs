//! The writer thread as the operating system sees it: named so operators
//! can find it in `top -H` and `perf`, and scheduled under `SCHED_BATCH`
//! so that a producer's send wakes it without preempting the producer
//! (see `schedule_without_wakeup_preemption` in `writer.rs`). Its own test
//! binary, so the only WAL writer in the process is this test's.

mod common;

use common::{backends, small_config};
use tc_wal::Wal;

/// `SCHED_BATCH` in `sched(7)`.
const SCHED_BATCH: u32 = 3;

/// (thread id, scheduling policy) of each thread of this process named `name`.
fn threads_named(name: &str) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("list /proc/self/task") {
        let tid = entry.expect("task entry").file_name();
        let tid = tid.to_string_lossy().into_owned();
        let Ok(comm) = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .expect("read the writer's stat");
        found.push((tid, policy_from_stat(&stat)));
    }
    found
}

/// Field 41 of `proc_pid_stat(5)`, counted after the parenthesised name
/// (field 2, which may hold spaces).
fn policy_from_stat(stat: &str) -> u32 {
    let after_name = &stat[stat.rfind(')').expect("stat has the name in parentheses") + 1..];
    after_name
        .split_whitespace()
        .nth(41 - 3)
        .expect("stat has a policy field")
        .parse()
        .expect("the policy is a number")
}

#[test]
fn the_writer_thread_runs_under_sched_batch() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), small_config(backend)).expect("open");
        // Acknowledged, so the writer is inside its loop.
        wal.append(1, &b"one record"[..]).expect("append");
        let writers = threads_named("tc-wal-writer");
        assert_eq!(
            writers.len(),
            1,
            "{backend}: one writer thread: {writers:?}"
        );
        assert_eq!(
            writers[0].1, SCHED_BATCH,
            "{backend}: the writer's scheduling policy (0 = SCHED_OTHER)"
        );
        drop(wal);
        assert!(
            threads_named("tc-wal-writer").is_empty(),
            "{backend}: closing the WAL ends its writer"
        );
    }
}

#[test]
fn stat_policy_is_read_after_a_name_with_spaces_and_parentheses() {
    let fields_after_name: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
    let stat = format!("42 (a (b) c) {}", fields_after_name.join(" "));
    assert_eq!(policy_from_stat(&stat), 41);
}
