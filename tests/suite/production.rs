//! benchq as it runs in production: mutual TLS, tokens, the real binaries,
//! and debug logging everywhere — and no secret in any of it.

use std::time::Duration;

use benchq_coordinator::auth::{Role, add_token};
use tokio::process::Command;

use crate::support::app::{Proc, bin, cli_with_env, script, spawn_coordinator_bin_logging};
use crate::support::pg;
use crate::tls::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_with_mutual_tls_and_tokens_leaks_no_secret() {
    let pki = Pki::new();
    let tokens = std::path::PathBuf::from(pki.path("tokens.json"));
    let agent_secret = add_token(&tokens, "fleet-a", Role::Agent, "team-a").unwrap();
    let operator_secret = add_token(&tokens, "ci-a", Role::Operator, "team-a").unwrap();
    let secrets = [agent_secret.as_str(), operator_secret.as_str()];

    let db_url = pg::cluster().fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (tokens_arg, cert, key, ca) = (
        pki.path("tokens.json"),
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let (mut coordinator, _) = spawn_coordinator_bin_logging(
        &format!("127.0.0.1:{port}"),
        &db_url,
        &[
            "--tokens",
            &tokens_arg,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ],
        "debug",
    )
    .await;
    let url = format!("https://localhost:{port}");

    // The runner prints its whole environment into the job's output, which
    // the coordinator stores: the agent's credentials must not be in it.
    let runner = script("runner.sh", "env\nexit 0\n");
    let mut cmd = Command::new(bin("benchq-agent"));
    cmd.args([
        "--coordinator",
        &url,
        "--agent-id",
        "secure-agent",
        "--slot",
        "0",
    ])
    .args(["--ca-cert", &ca, "--client-cert", &pki.path("client.pem")])
    .args(["--client-key", &pki.path("client.key")])
    .env("BENCHQ_TOKEN", &agent_secret)
    .env("RUST_LOG", "debug")
    .env("NO_COLOR", "1")
    .arg("--")
    .arg(&runner);
    let mut agent = Proc::spawn("agent", &mut cmd, None);

    let client_flags = [
        "--coordinator",
        &url,
        "--ca-cert",
        &ca,
        "--client-cert",
        &pki.path("client.pem"),
        "--client-key",
        &pki.path("client.key"),
    ];
    let env = [
        ("BENCHQ_TOKEN", operator_secret.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let mut outputs = Vec::new();
    let mut args = client_flags.to_vec();
    args.extend([
        "enqueue",
        "--scenario",
        "a",
        "--scenario",
        "b",
        "--model",
        "m",
        "--provider",
        "p",
    ]);
    let (code, batch, err) = cli_with_env(&args, &env).await;
    assert_eq!(code, 0, "{err}");
    let batch = batch.trim().to_string();
    outputs.push(err);
    let mut args = client_flags.to_vec();
    args.extend(["wait", &batch, "--timeout", "60s", "--output", "json"]);
    let (code, out, err) = cli_with_env(&args, &env).await;
    assert_eq!(code, 0, "{err}\nagent:\n{}", agent.log());
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["counts"]["passed"], 2, "{status:#}");
    outputs.extend([out, err]);
    let mut args = client_flags.to_vec();
    args.extend(["status", &batch]);
    let (code, out, err) = cli_with_env(&args, &env).await;
    assert_eq!(code, 0);
    outputs.extend([out, err]);
    // A wrong token is refused without being echoed back.
    let wrong = "bq_0000000000000000000000000000000000000000000000000000000000000000";
    let (code, out, err) = cli_with_env(&args, &[("BENCHQ_TOKEN", wrong)]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not authenticated"), "{err}");
    assert!(!err.contains(wrong) && !out.contains(wrong), "{err}");

    // The stored output of the jobs (the runner's environment) holds no credential.
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let stored: Vec<(String,)> = sqlx::query_as("SELECT coalesce(output_tail, '') FROM attempts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        stored.iter().any(|(o,)| o.contains("BENCHQ_SCENARIO_ID=")),
        "{stored:?}"
    );
    outputs.extend(stored.into_iter().map(|(o,)| o));

    for p in [&mut agent, &mut coordinator] {
        let status = p.terminate(Duration::from_secs(10)).await;
        assert!(status.success(), "{} exit: {status}", p.name);
    }
    let logs = [coordinator.log(), agent.log()];
    assert!(logs[0].contains("DEBUG"), "debug logging was on");
    let file = std::fs::read_to_string(&tokens).unwrap();
    for secret in secrets {
        for (what, text) in [
            ("coordinator log", &logs[0]),
            ("agent log", &logs[1]),
            ("tokens file", &file),
        ] {
            let line = text.lines().find(|l| l.contains(secret)).unwrap_or("");
            assert!(
                !text.contains(secret),
                "a token secret appears in the {what}: {line}"
            );
        }
        for text in &outputs {
            assert!(
                !text.contains(secret),
                "a token secret appears in CLI output or job output"
            );
        }
    }
}
