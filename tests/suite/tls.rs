//! TLS and mutual TLS, with certificates made at test time: every mismatch
//! fails at once with a message that says what to fix.

use std::path::PathBuf;

use benchq_coordinator::server::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::support::app::{TestApp, cli, spawn_app_configured};

/// A private CA, certificates it signed, and some it did not, as PEM files.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    pub fn new() -> Pki {
        let dir =
            std::env::temp_dir().join(format!("benchq-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();

        let make_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, ca) = make_ca("benchq test CA");
        let (other_pem, other) = make_ca("some other CA");
        write("ca.pem", ca_pem);
        write("other-ca.pem", other_pem);

        let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>, expired: bool| {
            let mut params = CertificateParams::new(names).unwrap();
            if expired {
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::days(30);
                params.not_after = now - time::Duration::days(1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server = vec!["localhost".to_string()];
        for (name, names, issuer, expired) in [
            ("server", server.clone(), &ca, false),
            ("expired", server.clone(), &ca, true),
            ("client", vec!["agent-1".to_string()], &ca, false),
            ("rogue-client", vec!["agent-x".to_string()], &other, false),
        ] {
            let (cert, key) = leaf(names, issuer, expired);
            write(&format!("{name}.pem"), cert);
            write(&format!("{name}.key"), key);
        }
        Pki { dir }
    }

    pub fn tls(&self, cert: &str, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join(format!("{cert}.pem")),
            key: self.dir.join(format!("{cert}.key")),
            client_ca: mutual.then(|| self.dir.join("ca.pem")),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn app(tls: Option<TlsFiles>) -> TestApp {
    spawn_app_configured(|c| c.tls = tls).await
}

/// Runs `benchq status` of an unknown batch with the given connection flags:
/// "not found" means the connection itself worked.
async fn status(url: &str, flags: &[&str]) -> (i32, String) {
    let batch = uuid::Uuid::new_v4().to_string();
    let mut args = vec!["--coordinator", url];
    args.extend_from_slice(flags);
    args.extend(["status", &batch]);
    let (code, _, err) = cli(&args).await;
    (code, err.trim().to_string())
}

fn https(app: &TestApp) -> String {
    format!("https://localhost:{}", app.addr.port())
}

#[tokio::test]
async fn tls_and_plaintext_mismatches_say_what_to_fix() {
    let pki = Pki::new();
    let tls = app(Some(pki.tls("server", false))).await;
    let plain = app(None).await;
    let ca = pki.path("ca.pem");

    let (code, err) = status(&https(&tls), &["--ca-cert", &ca]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "valid TLS connects: {err}");

    let (code, err) = status(&format!("http://localhost:{}", tls.addr.port()), &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("use an https:// URL"),
        "plaintext client, TLS coordinator: {err}"
    );

    let (code, err) = status(&https(&plain), &["--ca-cert", &ca]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("does not speak TLS"),
        "TLS client, plaintext coordinator: {err}"
    );

    let (_, err) = status(&https(&tls), &[]).await;
    assert!(err.contains("pass --ca-cert"), "unknown CA: {err}");
    let (_, err) = status(&https(&tls), &["--ca-cert", &pki.path("other-ca.pem")]).await;
    assert!(err.contains("pass --ca-cert"), "wrong CA: {err}");

    let expired = app(Some(pki.tls("expired", false))).await;
    let (_, err) = status(&https(&expired), &["--ca-cert", &ca]).await;
    assert!(err.contains("expired"), "expired certificate: {err}");

    let (_, err) = status(&https(&tls), &["--ca-cert", &pki.path("missing.pem")]).await;
    assert!(
        err.contains("--ca-cert") && err.contains("missing.pem"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let mtls = app(Some(pki.tls("server", true))).await;
    let ca = pki.path("ca.pem");

    let (code, err) = status(&https(&mtls), &["--ca-cert", &ca]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("--client-cert"),
        "no client certificate: {err}"
    );

    let rogue = [
        "--ca-cert",
        &ca,
        "--client-cert",
        &pki.path("rogue-client.pem"),
    ];
    let rogue_key = pki.path("rogue-client.key");
    let mut flags = rogue.to_vec();
    flags.extend(["--client-key", &rogue_key]);
    let (_, err) = status(&https(&mtls), &flags).await;
    assert!(
        err.contains("--client-ca"),
        "client certificate from another CA: {err}"
    );

    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let flags = [
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let (code, err) = status(&https(&mtls), &flags).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("not found"),
        "valid mutual TLS connects: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_misconfigured_connection_says_what_to_fix_and_exits() {
    use crate::support::app::{Proc, bin, script};
    use std::time::Duration;
    let pki = Pki::new();
    let mtls = app(Some(pki.tls("server", true))).await;
    let runner = script("ok.sh", "exit 0\n");
    let start = |url: String, flags: Vec<String>| {
        let mut cmd = tokio::process::Command::new(bin("benchq-agent"));
        cmd.args(["--coordinator", &url, "--slot", "0"])
            .args(&flags)
            .env("NO_COLOR", "1")
            .arg("--")
            .arg(&runner);
        Proc::spawn("agent", &mut cmd, None)
    };
    let ca = pki.path("ca.pem");
    let cases = [
        (
            format!("http://localhost:{}", mtls.addr.port()),
            vec![],
            "use an https:// URL",
        ),
        (https(&mtls), vec![], "pass --ca-cert"),
        (
            https(&mtls),
            vec!["--ca-cert".to_string(), ca.clone()],
            "--client-cert",
        ),
    ];
    for (url, flags, says) in cases {
        let mut agent = start(url.clone(), flags.clone());
        let status = tokio::time::timeout(Duration::from_secs(15), agent.child.wait())
            .await
            .unwrap_or_else(|_| panic!("agent kept retrying {url} {flags:?}:\n{}", agent.log()))
            .unwrap();
        assert_eq!(status.code(), Some(1), "{url} {flags:?}:\n{}", agent.log());
        assert!(
            agent.log().contains(says),
            "{url} {flags:?} should say {says:?}:\n{}",
            agent.log()
        );
    }

    // Set up right, it runs a job.
    let mut c = benchq::client::connect(benchq::client::ClientOptions {
        url: https(&mtls),
        ca_cert: Some(ca.clone().into()),
        client_cert: Some(pki.path("client.pem").into()),
        client_key: Some(pki.path("client.key").into()),
        ..Default::default()
    })
    .await
    .unwrap();
    c.enqueue_batch(crate::support::app::batch(&["over-tls"], 1))
        .await
        .unwrap();
    let flags = [
        "--ca-cert",
        &ca,
        "--client-cert",
        &pki.path("client.pem"),
        "--client-key",
        &pki.path("client.key"),
    ];
    let _agent = start(https(&mtls), flags.iter().map(|s| s.to_string()).collect());
    let pool = mtls.pool.clone();
    crate::support::app::eventually(
        Duration::from_secs(15),
        "the job to pass over mutual TLS",
        || {
            let pool = pool.clone();
            async move {
                let passed: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'passed'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                (passed == 1).then_some(())
            }
        },
    )
    .await;
}
