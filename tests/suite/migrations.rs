//! `benchq-coordinator migrate` on an empty database, then again: no change.

use tokio::process::Command;

use crate::support::app::bin;
use crate::support::pg;

async fn schema(url: &str) -> String {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name || '.' || column_name || ':' || data_type || ':' || is_nullable \
             FROM information_schema.columns WHERE table_schema = 'public' \
         UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
         UNION ALL SELECT conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace \
         UNION ALL SELECT 'migration ' || version || ' ' || checksum::text FROM _sqlx_migrations \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().map(|(r,)| r + "\n").collect()
}

async fn migrate(url: &str) {
    let out = Command::new(bin("benchq-coordinator"))
        .args(["migrate", "--database-url", url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_again_without_change() {
    let url = pg::cluster().fresh_database().await;
    migrate(&url).await;
    let first = schema(&url).await;
    assert!(first.contains("jobs_one_running_per_slot"), "{first}");
    assert!(first.contains("attempts.lease_token"), "{first}");
    migrate(&url).await;
    assert_eq!(schema(&url).await, first);
}

#[tokio::test]
async fn migrate_without_a_database_says_what_to_pass() {
    let out = Command::new(bin("benchq-coordinator"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--database-url"), "{err}");
}
