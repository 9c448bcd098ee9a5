//! A throwaway PostgreSQL cluster for the integration tests.
//!
//! Each test binary starts at most one cluster, on first use of [`cluster()`],
//! and gives every test its own database with [`Cluster::fresh_database`].
//! Starting a cluster (initdb + postgres) takes about a second, a fresh
//! database a few tens of milliseconds, so tests never share state and never
//! need a PostgreSQL installed as a service.
//!
//! # The server never outlives the test process
//!
//! A test binary can end in three ways: normally (the harness calls
//! `std::process::exit`), by a panic with `panic = "abort"`, or by a signal
//! (Ctrl-C, SIGKILL from a timeout). Only the first runs any of our code, so
//! cleanup cannot rely on it. Instead postgres is started by a small `sh`
//! wrapper whose stdin is a pipe held by the test process:
//!
//! - when the test process goes away, however it goes, the kernel closes the
//!   pipe; the wrapper reads EOF, sends postgres SIGQUIT (immediate shutdown),
//!   waits for it and removes the temp dir;
//! - [`Cluster::stop`] writes `stop` to the pipe instead: SIGINT (fast
//!   shutdown), the data stays for [`Cluster::start`];
//! - when postgres exits on its own (it could not bind its port, it crashed),
//!   the wrapper exits too, so a failed start is seen at once, not after a
//!   timeout.
//!
//! `initdb` runs under the same wrapper, so a test binary killed during its
//! first second leaves nothing behind either.
//!
//! The wrapper runs in its own process group, so a Ctrl-C at the terminal
//! reaches the test process only, and the pipe does the rest. An `atexit`
//! handler does the same shutdown synchronously at a normal exit, so the temp
//! dir is gone by the time the test binary has exited.
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root. When the tests run as root
//! (a CI container), the temp dir is given to the `postgres` user and both
//! programs run as that user, with `HOME` and the working directory set to the
//! temp dir since they cannot read `/root`.
//!
//! # Finding PostgreSQL
//!
//! `BENCHQ_PG_BIN` when set, else the directory of `initdb` on `PATH`, else the
//! newest `/usr/lib/postgresql/*/bin` (where Debian and Ubuntu put them: their
//! `/usr/bin` holds no `initdb`).

#![allow(dead_code)] // Each test binary uses its own part of the support code.

use std::ffi::CString;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// How long a start may take before the test fails with the server log.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const NOT_FOUND: &str = "PostgreSQL server binaries not found: install them with \
    `apt-get install postgresql` (Debian/Ubuntu) or set BENCHQ_PG_BIN to the \
    directory holding initdb and postgres";

/// The wrapper that ties a server's (or initdb's) life to the test process.
/// Arguments: the temp dir, the log file, then the command line. Its stdin is
/// the pipe; it exits with the command's status.
///
/// fd 3 keeps the pipe for the reader; the command and the main shell do not
/// hold it, so that only the test process's end decides when it reads EOF.
const WRAPPER: &str = r#"
tmp=$1; log=$2; shift 2
exec 3<&0 </dev/null
"$@" 3<&- >>"$log" 2>&1 &
pg=$!
(
    sig=QUIT
    while IFS= read -r line <&3; do
        if [ "$line" = stop ]; then sig=INT; break; fi
    done
    [ "$sig" = QUIT ] && : >"$tmp/orphaned"
    kill -"$sig" "$pg" 2>/dev/null
) &
reader=$!
exec 3<&-
wait "$pg"
status=$?
kill "$reader" 2>/dev/null
if [ -e "$tmp/orphaned" ]; then rm -rf "$tmp"; fi
exit "$status"
"#;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// One PostgreSQL cluster per test binary, started on first use.
///
/// Blocks while the cluster starts (about a second). Safe to call from any
/// thread, including from inside a tokio test: the readiness check runs on a
/// thread of its own.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::boot();
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(shutdown_at_exit) };
        cluster
    })
}

/// A running (or stopped, see [`Cluster::stop`]) PostgreSQL cluster in a temp dir.
pub struct Cluster {
    bin: PathBuf,
    tmp: PathBuf,
    port: u16,
    /// The user to run postgres as when the tests run as root.
    run_as: Option<(u32, u32)>,
    server: Mutex<Option<Server>>,
}

/// The wrapper of a started postgres, and the write end of its stdin pipe.
struct Server {
    wrapper: Child,
    pipe: ChildStdin,
}

impl Cluster {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`: a superuser connection
    /// to the maintenance database.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// The TCP port on 127.0.0.1; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database with a name no other test uses, and returns
    /// its URL. The database is not migrated.
    pub async fn fresh_database(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "test_{}_{}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        let mut conn = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to the test cluster at {}: {e}",
                    self.admin_url()
                )
            });
        // The name is ours (digits, hex and `_`): nothing to inject.
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        self.url(&name)
    }

    /// Fast shutdown, then start again on the same port with the same data.
    /// Returns once the server accepts connections. Connections open before
    /// the restart are closed by the server.
    ///
    /// The cluster is shared by every test of the binary: a test that stops
    /// it cuts the others' connections too. Keep such tests in a binary of
    /// their own, or serialize them with the rest (see `tests/pg_support.rs`).
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// Fast shutdown (SIGINT): the server closes every connection, writes a
    /// checkpoint and exits. Returns once it has exited. Does nothing when
    /// the server is already stopped.
    pub fn stop(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut s) = server.take() {
            // The wrapper may be gone already (postgres crashed): nothing to tell it.
            let _ = s.pipe.write_all(b"stop\n").and_then(|()| s.pipe.flush());
            let status = s.wrapper.wait().expect("waiting for the postgres wrapper");
            // Dropping the pipe only now: EOF before `stop` would mean "immediate
            // shutdown and delete everything".
            drop(s.pipe);
            if !status.success() {
                eprintln!(
                    "test postgres exited with {status} on stop; log:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// Starts the server on its port and data dir, and returns once it
    /// accepts connections. Does nothing when it is already running.
    pub fn start(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            let s = self.spawn().unwrap_or_else(|e| panic!("{e}"));
            *server = Some(s);
        }
    }

    // --- internals ---

    /// Finds the binaries, creates the temp dir, runs initdb and starts the
    /// server on a free port.
    fn boot() -> Cluster {
        let started = Instant::now();
        let bin = find_bin_dir();
        let run_as = run_as_user();
        let tmp = make_temp_dir();
        if let Some((uid, gid)) = run_as
            && let Err(e) = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
        {
            let _ = std::fs::remove_dir_all(&tmp);
            panic!("chown {} to postgres: {e}", tmp.display());
        }
        let mut cluster = Cluster {
            bin,
            tmp,
            port: 0,
            run_as,
            server: Mutex::new(None),
        };
        cluster.initdb();

        // Another process may take the port between our probe and postgres's
        // bind: try a few ports before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.spawn() {
                Ok(s) => {
                    *cluster.server.get_mut().unwrap() = Some(s);
                    eprintln!(
                        "test postgres: ready on port {} in {:?} (data and log in {})",
                        cluster.port,
                        started.elapsed(),
                        cluster.tmp.display()
                    );
                    return cluster;
                }
                Err(e) if cluster.log_tail().contains("could not bind") => {
                    last_error = e;
                    // The next attempt appends to the same log.
                }
                Err(e) => {
                    cluster.remove_temp_dir();
                    panic!("{e}");
                }
            }
        }
        cluster.remove_temp_dir();
        panic!("{last_error}");
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.tmp.join("postgres.log")
    }

    /// A command that runs as the postgres user when we are root.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.tmp)
            .env("HOME", &self.tmp)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // std drops supplementary groups (setgroups(0)) when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// `program args` under [`WRAPPER`], output appended to `log`, stdin the pipe.
    fn supervised(&self, log: &Path, program: &Path) -> Command {
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("benchq-test-postgres") // $0
            .arg(&self.tmp)
            .arg(log)
            .arg(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C must reach the test
            // process only, whose exit then closes the pipe.
            .process_group(0);
        cmd
    }

    fn initdb(&self) {
        let log = self.tmp.join("initdb.log");
        let initdb = self.bin.join("initdb");
        let mut wrapper = self
            .supervised(&log, &initdb)
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .spawn()
            .unwrap_or_else(|e| panic!("running {} through sh: {e}", initdb.display()));
        // Held until initdb is done: closing it would mean "we are gone, clean up".
        let pipe = wrapper.stdin.take();
        let status = wrapper.wait().expect("waiting for initdb");
        drop(pipe);
        if !status.success() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            self.remove_temp_dir();
            panic!("initdb failed ({status}):\n{output}");
        }
    }

    /// Starts postgres under the wrapper and waits until it serves queries.
    fn spawn(&self) -> Result<Server, String> {
        let mut cmd = self.supervised(&self.log_path(), &self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.tmp);
        // Durability buys nothing in a cluster that is deleted at exit.
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=400",
            "shared_buffers=64MB",
        ] {
            cmd.arg("-c").arg(setting);
        }
        let mut wrapper = cmd
            .spawn()
            .map_err(|e| format!("starting postgres through sh: {e}"))?;
        let pipe = wrapper.stdin.take().expect("piped stdin");
        let mut server = Server { wrapper, pipe };
        match self.wait_ready(&mut server.wrapper) {
            Ok(()) => Ok(server),
            Err(e) => {
                // Stop it if it is half up; the data dir stays for the log.
                let _ = server.pipe.write_all(b"stop\n");
                let _ = server.wrapper.wait();
                Err(format!(
                    "{e}\n--- {} ---\n{}",
                    self.log_path().display(),
                    self.log_tail()
                ))
            }
        }
    }

    /// Polls a TCP connect, then a real `SELECT 1`, until one succeeds, the
    /// server exits, or [`READY_TIMEOUT`] runs out.
    fn wait_ready(&self, wrapper: &mut Child) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let url = self.admin_url();
        // The caller may be inside a tokio runtime, where we can neither block
        // on a future nor start a runtime: query from a thread of our own.
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let check = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the readiness check");
            rt.block_on(async move {
                let mut last = String::from("not tried yet");
                while Instant::now() < deadline {
                    last = if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
                    {
                        format!("nothing listening on {addr}")
                    } else {
                        match tokio::time::timeout(Duration::from_secs(5), select_one(&url)).await {
                            Ok(Ok(())) => return Ok(()),
                            Ok(Err(e)) => e,
                            Err(_) => "SELECT 1 took more than 5 s".to_string(),
                        }
                    };
                    if tx.send(Err(last.clone())).is_err() {
                        return Err(last); // The caller gave up.
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(last)
            })
        });

        let mut last = String::new();
        loop {
            if check.is_finished() {
                return match check.join().expect("readiness check panicked") {
                    Ok(()) => Ok(()),
                    Err(e) => Err(format!(
                        "test postgres on port {} not ready after {READY_TIMEOUT:?}: {e}",
                        self.port
                    )),
                };
            }
            if let Ok(Some(status)) = wrapper.try_wait() {
                drop(rx); // Stops the check at its next round.
                let _ = check.join();
                let mut e = format!("test postgres exited during startup ({status})");
                if !last.is_empty() {
                    e.push_str(&format!("; last check: {last}"));
                }
                return Err(e);
            }
            while let Ok(Err(e)) = rx.try_recv() {
                last = e;
            }
            if Instant::now() > deadline + Duration::from_secs(10) {
                return Err(format!(
                    "test postgres on port {} not ready after {READY_TIMEOUT:?}: {last}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last 100 lines of the server log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(100)..].join("\n")
    }

    fn remove_temp_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Connects to `url` and runs `SELECT 1`.
async fn select_one(url: &str) -> Result<(), String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let one: Result<i32, _> = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await;
    let _ = conn.close().await;
    match one {
        Ok(1) => Ok(()),
        Ok(n) => Err(format!("SELECT 1 returned {n}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Registered with `atexit`: at a normal exit, shut the server down at once
/// and remove the temp dir before the process is gone.
extern "C" fn shutdown_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(cluster) = CLUSTER.get() else { return };
        // Another thread may still hold the lock (a test that never ended). Do
        // not hang the exit for it: the pipe closes with the process anyway.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut guard = loop {
            match cluster.server.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        if let Some(Server { mut wrapper, pipe }) = guard.take() {
            drop(pipe); // EOF: immediate shutdown, the wrapper removes the temp dir.
            let _ = wrapper.wait();
        }
        cluster.remove_temp_dir();
    });
}

/// Where `initdb` and `postgres` are; panics with what to install otherwise.
fn find_bin_dir() -> PathBuf {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();

    if let Some(dir) = std::env::var_os("BENCHQ_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !has_both(&dir) {
            panic!(
                "BENCHQ_PG_BIN={} does not hold both initdb and postgres",
                dir.display()
            );
        }
        return dir;
    }

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            // A symlink in /usr/local/bin may point at the real directory, where
            // postgres is sure to be next to it.
            if let Some(real) = initdb
                .canonicalize()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                && has_both(&real)
            {
                return real;
            }
            if has_both(&dir) {
                return dir;
            }
        }
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!("{NOT_FOUND}"),
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The postgres user's uid and gid when we are root, `None` otherwise.
fn run_as_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns null or a pointer to a static record, which we
    // read at once; tests reach this only once, under the OnceLock.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        panic!(
            "the tests run as root, and initdb/postgres refuse to: they run as the `postgres` \
             user, which does not exist. Create it (`useradd --system postgres`; installing the \
             `postgresql` package does) or run the tests as a normal user"
        );
    }
    // SAFETY: pw is non-null and points at a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn make_temp_dir() -> PathBuf {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    for i in 0..100 {
        let dir = base.join(format!("benchq-pg-{}-{nanos}-{i}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating a temp dir in {}: {e}", base.display()),
        }
    }
    panic!("could not create a unique temp dir in {}", base.display());
}

/// A port nothing listens on right now (the kernel's pick for port 0).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}
