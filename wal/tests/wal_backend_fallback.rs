//! When io_uring is unavailable (here: a seccomp filter makes
//! `io_uring_setup` fail with EPERM, as container runtimes do), `Auto`
//! falls back to the portable backend, logs which backend it uses and why,
//! and the WAL works; `Only(Uring)` refuses to open with an error that says
//! so. The filter is installed on one thread only (no TSYNC), so the rest of
//! the test process is untouched.

#![cfg(target_arch = "x86_64")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use tc_wal::{Backend, BackendChoice, Wal, WalConfig, WalError};

/// Makes `io_uring_setup` fail with EPERM on the calling thread (and the
/// threads it spawns from now on).
fn forbid_io_uring_on_this_thread() {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_DATA_NR_OFFSET: u32 = 0;
    let mut filter = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: SECCOMP_DATA_NR_OFFSET,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `program` points at `filter`, both alive
    // for the duration of the call (the kernel copies the program).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let installed = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const program,
        );
        assert_eq!(installed, 0, "installing the seccomp filter failed");
    }
    assert!(
        !common::io_uring_available(),
        "the filter should make io_uring unavailable"
    );
}

/// Collects what tracing writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn auto_falls_back_to_portable_and_says_why() {
    if !common::io_uring_available() {
        eprintln!("io_uring already unavailable here: the fallback is what every test runs");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let log = Captured::default();
    let writer = log.clone();
    std::thread::spawn(move || {
        forbid_io_uring_on_this_thread();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let only_uring = WalConfig {
                backend: BackendChoice::Only(Backend::Uring),
                ..common::small_config(Backend::Uring)
            };
            let refused = Wal::open(&path, only_uring)
                .err()
                .expect("Only(Uring) must fail");
            assert!(matches!(refused, WalError::Io { .. }), "{refused}");
            assert!(refused.to_string().contains("io_uring"), "{refused}");

            let auto = WalConfig {
                backend: BackendChoice::Auto,
                ..common::small_config(Backend::Portable)
            };
            let wal = Wal::open(&path, auto).expect("Auto opens without io_uring");
            assert_eq!(wal.backend(), Backend::Portable);
            let lsn = wal.append(1, &b"still durable"[..]).expect("append");
            let records = common::read_all(&wal);
            assert_eq!(
                (records[0].lsn, &records[0].payload[..]),
                (lsn, &b"still durable"[..])
            );
        });
    })
    .join()
    .expect("test thread");
    let text = String::from_utf8(log.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        text.contains("io_uring unavailable") && text.contains("pwrite + fdatasync"),
        "the log names the backend: {text}"
    );
    assert!(
        text.contains("Operation not permitted"),
        "the log says why: {text}"
    );
}
