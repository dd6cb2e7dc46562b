//! CPU time spent by each party of a network benchmark over its measured
//! window, read from `/proc`: the server (tc in this process, or a
//! baseline's process tree), the bench's own client threads, and the whole
//! machine.
//!
//! On one machine the client and the server share the CPUs, so how many
//! microseconds of CPU each spends per operation says more than ops/s
//! alone about what a faster server, or clients on their own machines,
//! would give. Linux only; elsewhere (or if `/proc` cannot be read) the
//! figures are absent.
//!
//! Accounting: a process's `stat` counts the time of all its threads,
//! those that exited included; a thread's only its own. So the in-process
//! tc server is this process's time minus the client runtime's threads and
//! the main thread (all long-lived), which keeps the short-lived io_uring
//! workers on the server's side.

use std::fs;
use std::time::Duration;

/// Thread-name prefix of the bench's client runtime (`runtime("clients")`,
/// truncated by the kernel to 15 bytes).
const CLIENT_THREAD_PREFIX: &str = "tc-bench-client";

/// Whose CPU time is the server's.
#[derive(Clone, Copy, Debug)]
pub enum ServerParty {
    /// tc served from this process: everything but the client threads.
    InProcess,
    /// A process and its children (a baseline's server).
    ProcessTree(u32),
    /// Somewhere else (`--addr`): not measured; the whole process is client.
    Elsewhere,
}

/// Cumulative CPU times at one moment.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    server_ticks: Option<u64>,
    client_ticks: u64,
    machine_busy_ticks: u64,
    machine_ticks: u64,
}

/// CPU use over a window, per operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    pub server_us_per_op: Option<f64>,
    pub client_us_per_op: f64,
    /// Share of all CPUs' time not idle (nor waiting for I/O), 0 to 1.
    pub machine_busy: f64,
}

impl CpuSample {
    /// Reads the times now; `None` if `/proc` cannot be read or parsed.
    pub fn take(server: ServerParty) -> Option<CpuSample> {
        let process = process_ticks("self").ok()?;
        let client = match server {
            ServerParty::Elsewhere => process,
            _ => client_thread_ticks().ok()?,
        };
        let server_ticks = match server {
            ServerParty::InProcess => Some(process.saturating_sub(client)),
            ServerParty::ProcessTree(pid) => Some(process_tree_ticks(pid).ok()?),
            ServerParty::Elsewhere => None,
        };
        let (machine_busy_ticks, machine_ticks) = machine_ticks().ok()?;
        Some(CpuSample {
            server_ticks,
            client_ticks: client,
            machine_busy_ticks,
            machine_ticks,
        })
    }

    /// CPU use from `start` to `self`, for `ops` operations.
    pub fn since(&self, start: &CpuSample, ops: u64) -> Option<CpuUse> {
        let ops = ops.max(1) as f64;
        let us_per_op = |ticks: u64| ticks_to_duration(ticks).as_secs_f64() * 1e6 / ops;
        let machine = self.machine_ticks.checked_sub(start.machine_ticks)?;
        let busy = self
            .machine_busy_ticks
            .checked_sub(start.machine_busy_ticks)?;
        Some(CpuUse {
            server_us_per_op: match (self.server_ticks, start.server_ticks) {
                (Some(end), Some(begin)) => Some(us_per_op(end.checked_sub(begin)?)),
                _ => None,
            },
            client_us_per_op: us_per_op(self.client_ticks.checked_sub(start.client_ticks)?),
            machine_busy: if machine == 0 {
                0.0
            } else {
                busy as f64 / machine as f64
            },
        })
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_sec = u64::try_from(per_sec)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(100);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / per_sec))
}

/// utime + stime of a process (`"self"` or a pid), all its threads.
fn process_ticks(pid: &str) -> Result<u64, String> {
    let text = read(&format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&text)?.ticks)
}

/// A process and its children (PostgreSQL's backends and helpers are
/// children of the postmaster): its own time, the time of its children
/// that exited and were reaped (which moves into its `cutime` and `cstime`
/// as they leave `/proc`: backends exit as the bench's connections close
/// at the end of the window), and the time of the live ones.
fn process_tree_ticks(pid: u32) -> Result<u64, String> {
    let root = read(&format!("/proc/{pid}/stat"))?;
    let root = parse_stat(&root)?;
    let mut ticks = root.ticks + root.reaped_children_ticks;
    let entries = fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        // A process may exit between the listing and the read.
        let Ok(text) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Ok(stat) = parse_stat(&text)
            && stat.ppid == pid
        {
            ticks += stat.ticks;
        }
    }
    Ok(ticks)
}

/// The client runtime's threads and the main thread of this process.
fn client_thread_ticks() -> Result<u64, String> {
    let main_tid = std::process::id().to_string();
    let tasks = fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    let mut ticks = 0;
    for task in tasks.flatten() {
        let Ok(text) = fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread exited meanwhile
        };
        let stat = parse_stat(&text)?;
        if stat.comm.starts_with(CLIENT_THREAD_PREFIX) || task.file_name() == main_tid.as_str() {
            ticks += stat.ticks;
        }
    }
    Ok(ticks)
}

/// (busy, total) jiffies of all CPUs from `/proc/stat`'s first line; busy
/// is everything but idle and iowait.
fn machine_ticks() -> Result<(u64, u64), String> {
    parse_machine(&read("/proc/stat")?)
}

fn read(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

#[derive(Debug, PartialEq)]
struct Stat<'a> {
    comm: &'a str,
    ppid: u32,
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: children that exited and were waited for.
    reaped_children_ticks: u64,
}

/// Parses `/proc/PID/stat` (or a thread's): `pid (comm) state ppid ...`
/// with utime, stime, cutime and cstime as fields 14 to 17. The name may
/// hold spaces and parentheses, so the fields start after the last `)`.
fn parse_stat(text: &str) -> Result<Stat<'_>, String> {
    let open = text.find('(').ok_or("stat: no '(' before the name")?;
    let close = text.rfind(')').ok_or("stat: no ')' after the name")?;
    if close < open {
        return Err("stat: ')' before '('".into());
    }
    let comm = &text[open + 1..close];
    // Fields from 3 (state) on.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, String> {
        fields.get(n - 3).copied().ok_or_else(|| {
            format!(
                "stat: {} fields after the name, field {n} missing",
                fields.len()
            )
        })
    };
    let number = |n: usize| -> Result<u64, String> {
        let text = field(n)?;
        text.parse()
            .map_err(|_| format!("stat: field {n} is {text:?}, not a number"))
    };
    let ppid = u32::try_from(number(4)?).map_err(|_| "stat: ppid out of range".to_string())?;
    let ticks = number(14)?
        .checked_add(number(15)?)
        .ok_or("stat: utime + stime overflows")?;
    let reaped_children_ticks = number(16)?
        .checked_add(number(17)?)
        .ok_or("stat: cutime + cstime overflows")?;
    Ok(Stat {
        comm,
        ppid,
        ticks,
        reaped_children_ticks,
    })
}

/// `cpu  user nice system idle iowait irq softirq steal ...` → (busy,
/// total).
fn parse_machine(text: &str) -> Result<(u64, u64), String> {
    let line = text.lines().next().ok_or("/proc/stat is empty")?;
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some("cpu") {
        return Err(format!("/proc/stat starts with {line:?}, not the cpu line"));
    }
    let values = words
        .map(|w| {
            w.parse::<u64>()
                .map_err(|_| format!("/proc/stat: {w:?} is not a number"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    if values.len() < 5 {
        return Err(format!(
            "/proc/stat: {} cpu fields, expected at least 5",
            values.len()
        ));
    }
    // guest and guest_nice (fields 9 and 10) are already in user and nice.
    let counted = &values[..values.len().min(8)];
    let total = counted.iter().try_fold(0u64, |sum, v| sum.checked_add(*v));
    let total = total.ok_or("/proc/stat: cpu times overflow")?;
    let idle = values[3] + values[4];
    Ok((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_name_with_spaces_and_parentheses() {
        let text = "4242 (tc (wal) writer) S 17 4242 4242 0 -1 4194560 1 0 0 0 \
                    250 130 0 0 20 0 3 0 100 0 0\n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                comm: "tc (wal) writer",
                ppid: 17,
                ticks: 380,
                reaped_children_ticks: 0
            }
        );
    }

    #[test]
    fn children_that_exited_count_for_their_parent() {
        // A shell that ran a busy child and waited for it: the child's time
        // is in the shell's cutime and cstime once the child is gone.
        let output = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done & wait; cat /proc/$$/stat",
            ])
            .output()
            .expect("run sh");
        let text = String::from_utf8(output.stdout).unwrap();
        let stat = parse_stat(&text).unwrap();
        assert!(stat.reaped_children_ticks > 0, "{text}");
    }

    #[test]
    fn bad_stat_lines_are_errors_that_say_what_is_wrong() {
        assert!(parse_stat("").unwrap_err().contains("'('"));
        assert!(
            parse_stat("1 (x) S 2 3")
                .unwrap_err()
                .contains("field 14 missing")
        );
        let err = parse_stat("1 (x) S 2 3 4 5 6 7 8 9 10 11 abc 13").unwrap_err();
        assert!(err.contains("field 14") && err.contains("abc"), "{err}");
        assert!(parse_stat("1 )x( S").is_err());
    }

    #[test]
    fn random_bytes_never_panic_the_parsers() {
        let alphabet = b" ()0123456789cpu\nSxa-";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |below: usize| {
            // xorshift64: the file is also compiled into tests/baselines.rs,
            // which has no random number generator of its own.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        for _ in 0..20_000 {
            let len = next(60);
            let text: String = (0..len)
                .map(|_| alphabet[next(alphabet.len())] as char)
                .collect();
            let _ = parse_stat(&text);
            let _ = parse_machine(&text);
        }
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 800 40 0 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_machine(text).unwrap(), (160, 1000));
        assert!(parse_machine("intr 1 2\n").is_err());
        assert!(
            parse_machine("cpu 1 2 3\n")
                .unwrap_err()
                .contains("at least 5")
        );
    }

    #[test]
    fn this_process_measures_itself() {
        let start = CpuSample::take(ServerParty::InProcess).expect("/proc readable");
        // A thread that is neither the main thread nor a client thread: its
        // 200 ms of spinning count as the "server's".
        std::thread::Builder::new()
            .name("spinner".into())
            .spawn(|| {
                let deadline = std::time::Instant::now() + Duration::from_millis(200);
                let mut spin = 0u64;
                while std::time::Instant::now() < deadline {
                    spin = std::hint::black_box(spin.wrapping_add(1));
                }
            })
            .unwrap()
            .join()
            .unwrap();
        let end = CpuSample::take(ServerParty::InProcess).unwrap();
        let used = end.since(&start, 1).unwrap();
        let server_us = used.server_us_per_op.unwrap();
        assert!(server_us >= 100_000.0, "server {server_us} us");
        assert!((0.0..=1.0).contains(&used.machine_busy));
    }
}
