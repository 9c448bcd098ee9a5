//! The `benchq-coordinator` binary's start-up errors: each is one line that says what to fix.

use std::process::Command;

fn coordinator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_benchq-coordinator"));
    c.env_remove("DATABASE_URL").env_remove("BENCHQ_LISTEN");
    c
}

#[test]
fn without_a_database_it_says_how_to_give_one() {
    let out = coordinator().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--database-url") && err.contains("DATABASE_URL"),
        "{err}"
    );
}

#[test]
fn an_unreachable_database_is_reported_not_waited_for() {
    // Nothing listens on this port: bind one and drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = coordinator()
        .args([
            "--database-url",
            &format!("postgres://benchq@127.0.0.1:{port}/benchq"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    let out = coordinator()
        .args(["--database-url", "postgres://x/y", "--lease-ttl", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lease-ttl"), "{err}");
}
