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
            "--insecure-no-auth",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
}

#[test]
fn settings_that_would_break_the_queue_are_refused() {
    for (flag, value, says) in [
        (
            "--reap-interval",
            "0s",
            "--reap-interval must be more than zero",
        ),
        ("--lease-ttl", "0s", "--lease-ttl must be more than zero"),
        ("--lease-ttl", "10ms", "too short"),
        (
            "--db-connections",
            "0",
            "--db-connections must be at least 1",
        ),
    ] {
        let out = coordinator()
            .args([
                "--database-url",
                "postgres://x/y",
                "--insecure-no-auth",
                flag,
                value,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
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

#[test]
fn running_without_authentication_is_an_explicit_loopback_only_choice() {
    let out = coordinator()
        .args(["--database-url", "postgres://x/y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tokens") && err.contains("--insecure-no-auth"),
        "{err}"
    );

    let out = coordinator()
        .args(["--database-url", "postgres://x/y", "--insecure-no-auth"])
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only allowed on a loopback address"), "{err}");
}

#[test]
fn token_add_prints_the_secret_once_and_stores_only_its_hash() {
    let dir = std::env::temp_dir().join(format!("benchq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.json");
    let _ = std::fs::remove_file(&file);
    let out = coordinator()
        .args(["token", "add", "--file", file.to_str().unwrap()])
        .args(["--name", "fleet-a", "--role", "agent", "--tenant", "team-a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("bq_"), "{secret}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        stored.contains("fleet-a") && !stored.contains(&secret),
        "{stored}"
    );
    let out = coordinator()
        .args(["token", "add", "--file", file.to_str().unwrap()])
        .args(["--name", "x", "--role", "wizard"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role"));
    std::fs::remove_dir_all(dir).unwrap();
}
