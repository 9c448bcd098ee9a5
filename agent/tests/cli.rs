//! The `benchq-agent` binary as an operator meets it: usage errors that name
//! what is wrong, and a clean exit on SIGTERM while the coordinator is down.
//!
//! These also make `cargo test --workspace` build the binary, which the
//! end-to-end tests of the workspace suite start as a real process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_benchq-agent");

/// Runs the binary to completion with `args`, without BENCHQ_COORDINATOR
/// from the environment.
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("BENCHQ_COORDINATOR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run benchq-agent")
}

/// Asserts a usage error: exit code 2, nothing started, and a message that
/// contains every one of `needles` and points to `--help`.
fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: the error does not mention {needle:?}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("--help"),
        "{args:?}: no pointer to --help:\n{stderr}"
    );
}

#[test]
fn a_missing_slot_is_a_usage_error_naming_it() {
    assert_usage_error(
        &["--coordinator", "http://127.0.0.1:1", "--", "true"],
        &["required arguments were not provided", "--slot <N>"],
    );
}

#[test]
fn a_missing_program_is_a_usage_error_naming_it() {
    assert_usage_error(
        &["--coordinator", "http://127.0.0.1:1", "--slot", "0"],
        &["required arguments were not provided", "<PROGRAM>"],
    );
}

#[test]
fn a_missing_coordinator_is_a_usage_error_naming_it() {
    assert_usage_error(
        &["--slot", "0", "--", "true"],
        &[
            "required arguments were not provided",
            "--coordinator <URL>",
        ],
    );
}

#[test]
fn an_unparsable_lease_wait_names_the_flag_and_the_value() {
    assert_usage_error(
        &[
            "--coordinator",
            "http://127.0.0.1:1",
            "--slot",
            "0",
            "--lease-wait",
            "soon",
            "--",
            "true",
        ],
        &["invalid value 'soon' for '--lease-wait <DURATION>'"],
    );
}

#[test]
fn a_negative_slot_is_refused() {
    assert_usage_error(
        &[
            "--coordinator",
            "http://127.0.0.1:1",
            "--slot=-1",
            "--",
            "true",
        ],
        &["invalid value '-1' for '--slot <N>'"],
    );
}

#[test]
fn help_lists_the_flags_with_their_defaults() {
    let out = run(&["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for needle in [
        "--coordinator",
        "--slot",
        "--lease-wait",
        "[default: 30s]",
        "--grace",
        "PROGRAM",
    ] {
        assert!(
            stdout.contains(needle),
            "--help lacks {needle:?}:\n{stdout}"
        );
    }
}

/// Kills the child if the test fails before it has exited.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: String,
}

impl Running {
    /// Waits for a stderr line containing `needle`; panics with the log so far
    /// after `limit`.
    fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {limit:?}; log:\n{}",
                    self.log
                ),
            }
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for benchq-agent") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "benchq-agent still running {limit:?} after SIGTERM; log:\n{}",
                self.log
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_unreachable_coordinator_is_logged_and_sigterm_exits_cleanly() {
    // A port with nothing behind it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let url = format!("http://{addr}");
    let mut child = Command::new(BIN)
        .args(["--coordinator", &url, "--slot", "0", "--slot", "1"])
        .args(["--agent-id", "cli-test", "--", "true"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start benchq-agent");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut agent = Running {
        child,
        lines,
        log: String::new(),
    };

    let warning = agent.wait_for_line("unreachable", Duration::from_secs(5));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&url),
        "the warning names the coordinator: {warning}"
    );

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let status = agent.wait_exit(Duration::from_secs(3));
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log);
    // Drain the rest of the log: the outage is reported once, not per retry.
    while let Ok(line) = agent.lines.recv_timeout(Duration::from_secs(1)) {
        agent.log.push_str(&line);
        agent.log.push('\n');
    }
    assert_eq!(
        agent.log.matches("unreachable").count(),
        1,
        "log:\n{}",
        agent.log
    );
    assert!(
        agent.log.contains("every slot drained"),
        "log:\n{}",
        agent.log
    );
}
