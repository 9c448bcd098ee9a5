//! The test PostgreSQL helper works: the other integration tests stand on it.

mod support;

use sqlx::{Connection, PgConnection};
use support::pg::cluster;
use tokio::sync::RwLock;

/// Tests run in parallel on one cluster: the restart test takes this for
/// writing, so no other test has its connections cut from under it.
static SERVER_UP: RwLock<()> = RwLock::const_new(());

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

#[tokio::test]
async fn fresh_database_is_reachable_and_empty() {
    let _up = SERVER_UP.read().await;
    let url = cluster().fresh_database().await;
    let mut conn = connect(&url).await;

    let (db, one): (String, i32) = sqlx::query_as("SELECT current_database(), 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert!(
        url.ends_with(&format!("/{db}")),
        "{url} is not database {db}"
    );

    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a fresh database has no tables");
}

#[tokio::test]
async fn fresh_databases_are_distinct() {
    let _up = SERVER_UP.read().await;
    let (a, b) = tokio::join!(cluster().fresh_database(), cluster().fresh_database());
    assert_ne!(a, b);

    let mut conn_a = connect(&a).await;
    sqlx::query("CREATE TABLE only_in_a (x int)")
        .execute(&mut conn_a)
        .await
        .unwrap();

    let mut conn_b = connect(&b).await;
    let seen_in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(&mut conn_b)
        .await
        .unwrap();
    assert_eq!(seen_in_b, None, "a table created in {a} is visible in {b}");
}

#[tokio::test]
async fn admin_url_points_at_the_cluster() {
    let _up = SERVER_UP.read().await;
    let c = cluster();
    assert_eq!(
        c.admin_url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", c.port())
    );
    let mut conn = connect(&c.admin_url()).await;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(superuser);
}

#[tokio::test]
async fn restart_keeps_data() {
    let _down = SERVER_UP.write().await;
    let c = cluster();
    let url = c.fresh_database().await;
    let mut conn = connect(&url).await;
    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('before restart')")
        .execute(&mut conn)
        .await
        .unwrap();
    let port = c.port();

    let restart = std::time::Instant::now();
    c.restart();
    eprintln!("restart took {:?}", restart.elapsed());
    assert_eq!(c.port(), port, "restart keeps the port");

    // The old connection was closed by the fast shutdown.
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "a connection survived the restart"
    );

    let mut conn = connect(&url).await;
    let v: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "before restart");

    // stop() and start() are the two halves, and idempotent.
    c.stop();
    c.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped server still listens"
    );
    c.start();
    c.start();
    let mut conn = connect(&url).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_postgres_restart_without_operator_action() {
    use std::time::Duration;
    use support::app::{
        assert_each_job_ran_once, numbered_batch, script, spawn_coordinator_bin, spawn_slot_agents,
    };

    let _down = SERVER_UP.write().await;
    let db_url = cluster().fresh_database().await;
    let (mut coordinator, url) =
        // A TTL well above the outage: agents stop their jobs after half a
        // TTL without a heartbeat, and this test is about riding it out.
        spawn_coordinator_bin(&db_url, &["--lease-ttl", "10s", "--reap-interval", "200ms"]).await;
    let runner = script("quick.sh", "sleep 0.05\nexit 0\n");
    let agents = spawn_slot_agents(&url, 2, &runner);
    let started = std::time::Instant::now();
    let mut c = benchq::client::connect(&url).await.unwrap();
    c.enqueue_batch(numbered_batch(120, 2)).await.unwrap();

    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(&db_url)
        .await
        .unwrap();
    let passed = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE state = 'passed'")
            .fetch_one(&pool)
            .await
            .ok()
    };
    while passed(pool.clone()).await.unwrap_or(0) < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "batch did not start"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // PostgreSQL goes away for a second, mid-batch, and comes back.
    let outage = std::time::Instant::now();
    tokio::task::spawn_blocking(|| {
        cluster().stop();
        std::thread::sleep(Duration::from_secs(1));
        cluster().start();
    })
    .await
    .unwrap();
    let outage = outage.elapsed();
    while passed(pool.clone()).await.unwrap_or(0) < 120 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "batch did not finish after the restart; coordinator log:\n{}",
            coordinator.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "120 jobs with a {outage:?} PostgreSQL outage mid-batch: {:?}",
        started.elapsed()
    );
    assert!(
        coordinator.child.try_wait().unwrap().is_none(),
        "the coordinator kept running through the outage"
    );
    assert!(
        coordinator.log().contains("LISTEN connection lost"),
        "the coordinator noticed and re-established LISTEN:\n{}",
        coordinator.log()
    );
    assert_each_job_ran_once(&pool, &agents).await;
}
