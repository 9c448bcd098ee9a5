//! The agent's child processes, and what the kernel must be told so that none
//! of a job's processes outlives the job, or the agent.
//!
//! A job is a process group led by the child the agent starts (see
//! [`crate::ProcessRunner`]). While the agent lives it stops groups itself.
//! This module covers what happens around that:
//!
//! - **The agent dies** (SIGKILL, OOM kill, crash). Each job leader gets
//!   `PR_SET_PDEATHSIG(SIGKILL)`, and each job gets a *guard*: a tiny `sh`,
//!   outside the job's group, blocked reading a pipe that only the agent
//!   writes to. When the agent dies the kernel closes that pipe, the read
//!   returns, and the guard kills the job's whole group. The death signal
//!   alone would only reach the leader; harnesses run the code under test as
//!   grandchildren, which are the processes that matter.
//! - **The death signal is per thread.** Linux sends it when the *thread* that
//!   forked the child exits, not the process. Tokio retires threads while the
//!   process lives on: blocking-pool threads after 10 s idle, a worker that
//!   gives its core away in `block_in_place`, every thread of a runtime shut
//!   down inside a longer-lived program (tests, embedders). A job forked from
//!   such a thread would be killed mid-run. So every child is forked by one
//!   dedicated thread, started on first use and never ended: it dies with the
//!   process and only then.
//! - **Orphans and zombies.** [`become_subreaper`] makes the agent the parent
//!   of any process orphaned inside its jobs (instead of init, which in a
//!   container may never reap them) and reaps those orphans as they exit.
//!   Zombies still count as group members for `kill(2)`, so liveness checks
//!   ([`group_alive`]) read `/proc` and ignore them: a stopped job whose
//!   processes are all dead is reported at once, not after its grace period.
//! - **Processes that leave the group** (`setsid`, `setpgid`: daemons, a
//!   harness's "start the server in the background") escape a group kill.
//!   Every process of a job carries a marker in its environment,
//!   `BENCHQ_JOB_RUN=<random id>`, fresh for each run and inherited through
//!   `setsid`, `fork` and `exec`. When a job ends, however it ends,
//!   [`kill_leftovers`] kills its group, every process on the host carrying
//!   its marker (found through `/proc/PID/environ`), and every descendant of
//!   those, in rounds until none is left (a process may fork while it is
//!   being killed). When the agent itself dies, the guard does the same by
//!   marker (with `grep` over `/proc/*/environ`), after the group kill.
//!
//! What this does not cover, short of cgroups: a process that both leaves
//! the job's group *and* drops the marker from its environment (`env -i`,
//! `env -u BENCHQ_JOB_RUN`, or any exec with an environment of its own) and
//! whose parent chain up to a marked process is broken (its parent died, so
//! it was re-parented to the agent or to init); a process whose environment
//! the agent may not read (another user's, e.g. after `sudo` or a setuid
//! program); and, after a SIGKILL of the agent, descendants of marked
//! processes that dropped the marker (the guard only matches the marker).
//! Each of these needs a cgroup per job (systemd-run --scope, or a container
//! per agent) to be contained for sure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// Children that a tokio [`Child`] will wait for: the orphan reaper must leave
/// them alone, or tokio's `wait` would find them gone (`ECHILD`) and the job
/// would lose its exit status. A pid is added under this lock in the same
/// critical section as the fork, and removed once tokio has reaped it.
static OWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Set by [`become_subreaper`]: only then does this process adopt orphans.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// How often the orphan reaper looks even without a SIGCHLD (signals coalesce).
const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// The environment variable that marks every process of one run of a job.
pub(crate) const RUN_MARKER_VAR: &str = "BENCHQ_JOB_RUN";

/// At most this many rounds of looking for and killing a job's leftovers: a
/// process forking as fast as it can is still caught after a few.
const SWEEP_ROUNDS: usize = 10;

/// The guard: ignores the signals an operator or a terminal might send, waits
/// for end-of-file on its stdin (the agent never writes, so that is the
/// agent's death, or the agent dropping the job), then kills group `$1`, and
/// then every process whose environment holds `BENCHQ_JOB_RUN=$2` (in rounds,
/// for processes forking meanwhile; a zombie's environment reads empty).
/// dash's `kill` takes no `--`; `-$1` is read as a group because `-KILL`
/// already named the signal.
const GUARD_SCRIPT: &str = r#"trap '' HUP INT TERM QUIT
read -r line
kill -KILL -$1 2>/dev/null
[ -n "$2" ] || exit 0
for round in 1 2 3 4 5 6 7 8 9 10; do
  found=
  for f in $(grep -lszxF "BENCHQ_JOB_RUN=$2" /proc/[0-9]*/environ); do
    p=${f#/proc/}
    kill -KILL "${p%/environ}" 2>/dev/null && found=1
  done
  [ -n "$found" ] || break
done
exit 0"#;

/// A child spawned by this module, registered in [`OWNED`] until tokio has
/// reaped it (after a successful [`OwnedChild::wait`], or once dropped: a
/// dropped child is killed if `kill_on_drop` was set, and tokio or the
/// orphan reaper reaps it).
#[derive(Debug)]
pub(crate) struct OwnedChild {
    child: Option<Child>,
    pid: Option<u32>,
}

impl OwnedChild {
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("only taken by drop and by wait's release")
    }

    /// The process id, while it has not been waited for.
    pub(crate) fn id(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Waits for the child to exit and releases it to the orphan reaper.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child_mut().wait().await;
        if status.is_ok() {
            self.release();
        }
        status
    }

    fn release(&mut self) {
        if let Some(pid) = self.pid.take() {
            owned().remove(&pid);
        }
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        // The child first: with kill_on_drop, tokio sends SIGKILL while the pid
        // is still ours for sure. Only then may the reaper have it.
        drop(self.child.take());
        self.release();
    }
}

fn owned() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    OWNED.lock().unwrap_or_else(PoisonError::into_inner)
}

struct SpawnRequest {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Spawns `command` from the spawner thread (see the module docs) and
/// registers it as owned. Must be called within a tokio runtime, which the
/// child is bound to as if it had been spawned here.
pub(crate) async fn spawn(command: Command) -> io::Result<OwnedChild> {
    let (reply, response) = oneshot::channel();
    let request = SpawnRequest {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    spawner()?
        .send(request)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let child = response
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))??;
    let pid = child.id();
    Ok(OwnedChild {
        child: Some(child),
        pid,
    })
}

/// The sender to the spawner thread, started on first use. The thread lives
/// as long as the process: the sender is in a static, so its loop never ends.
fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let mut slot = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sender) = slot.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("benchq-spawner".into())
        .spawn(move || {
            for request in requests {
                let SpawnRequest {
                    mut command,
                    runtime,
                    reply,
                } = request;
                let _runtime = runtime.enter();
                let spawned = {
                    let mut owned = owned();
                    let spawned = command.spawn();
                    if let Some(pid) = spawned.as_ref().ok().and_then(Child::id) {
                        owned.insert(pid);
                    }
                    spawned
                };
                // A requester that went away drops the child here, with the
                // runtime entered: kill_on_drop still applies.
                let _ = reply.send(spawned);
            }
        })?;
    *slot = Some(sender.clone());
    Ok(sender)
}

/// Makes the child die with the agent: `PR_SET_PDEATHSIG(SIGKILL)`, set after
/// `process_group(0)` (std runs `pre_exec` hooks after `setpgid`). If the
/// agent died between fork and `prctl`, the child has already been
/// reparented: it refuses to start.
pub(crate) fn die_with_agent(command: &mut Command) {
    // SAFETY: getpid is always safe.
    let agent = unsafe { libc::getpid() };
    // SAFETY: the hook runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid), touching no locks or heap.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != agent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Starts the guard of process group `pgid`, whose processes carry `marker`
/// (see the module docs). Stop it with [`stop_guard`] once the job is over;
/// dropping it kills it too.
pub(crate) async fn spawn_guard(pgid: i32, marker: &str) -> io::Result<OwnedChild> {
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            GUARD_SCRIPT,
            "benchq-guard",
            &pgid.to_string(),
            marker,
        ])
        // Not the job's: the guard must not match its own marker.
        .env_remove(RUN_MARKER_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: out of reach of the job's group signals, and not
        // counted as a member of the job's group.
        .process_group(0)
        .kill_on_drop(true);
    spawn(command).await
}

/// Kills a guard without letting it act (its stdin stays open until it is
/// dead) and reaps it.
pub(crate) async fn stop_guard(mut guard: OwnedChild) {
    let _ = guard.child_mut().start_kill();
    let _ = guard.wait().await;
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): processes
/// orphaned below it are reparented to it rather than to init. Then reaps
/// them as they exit, on SIGCHLD and every few seconds, on a task of the
/// current tokio runtime.
///
/// Reaping takes every exited child that [`crate::ProcessRunner`] is not
/// waiting for: call this only in a program whose children are all started
/// by `ProcessRunner` (as the `benchq-agent` binary is), since a child started
/// any other way could be reaped before its owner waits for it.
///
/// # Errors
///
/// The `prctl` error (Linux only), or the SIGCHLD listener's.
pub fn become_subreaper() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child())?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SUBREAPER.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tokio::time::sleep(REAP_INTERVAL) => {}
            }
            let reaped = reap_orphans();
            if reaped > 0 {
                debug!("reaped {reaped} orphaned process(es)");
            }
        }
    });
    Ok(())
}

/// Reaps every exited child of this process that no tokio `Child` waits for.
/// Does nothing unless [`become_subreaper`] was called. Returns how many.
pub(crate) fn reap_orphans() -> usize {
    if !SUBREAPER.load(Ordering::SeqCst) {
        return 0;
    }
    // SAFETY: getpid is always safe.
    let me = unsafe { libc::getpid() };
    let owned = owned();
    let stats = match proc_stats() {
        Ok(stats) => stats,
        Err(e) => {
            warn!("cannot list processes to reap orphans: {e}");
            return 0;
        }
    };
    let mut reaped = 0;
    for p in stats {
        if p.ppid != me || !p.is_zombie() || owned.contains(&(p.pid as u32)) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on a pid that is our zombie child, not waited for
        // by anyone else (checked under the OWNED lock, which spawns take).
        if unsafe { libc::waitpid(p.pid, &mut status, libc::WNOHANG) } == p.pid {
            reaped += 1;
        }
    }
    reaped
}

/// Whether any process of group `pgid` is still running. Zombies do not
/// count: they are dead, only not yet reaped by their parent.
pub(crate) fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(-pgid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false; // no member at all, not even a zombie
    }
    match proc_stats() {
        Ok(stats) => stats.into_iter().any(|p| p.pgrp == pgid && !p.is_zombie()),
        Err(_) => true, // cannot tell: assume the worst, as kill(2) does
    }
}

/// Sends `signal` to every process in group `pgid`.
pub(crate) fn kill_group(pgid: i32, signal: libc::c_int) {
    // Never 0 (our own group), 1 (kill(-1) signals every process we may signal).
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// A fresh marker for one run of a job: 128 random bits in hex, so that no
/// two runs on a host (of this agent or any other) share one.
pub(crate) fn new_run_marker() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom (a very bare chroot): unique enough on one host.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    bytes[12..]
        .iter_mut()
        .zip(n.to_le_bytes())
        .for_each(|(b, c)| *b ^= c);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `signal` to what is running of a job: group `pgid`, and the
/// processes outside it that carry `marker`, with their descendants.
pub(crate) fn signal_job(marker: &str, pgid: Option<i32>, signal: libc::c_int) {
    if let Some(pgid) = pgid {
        kill_group(pgid, signal);
    }
    for pid in job_processes(marker, pgid) {
        // SAFETY: kill(2) takes plain integers; job_processes never names
        // this process, init or a process group.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Kills everything left of a job (see the module docs): its group, the
/// processes carrying its marker and their descendants, in rounds until
/// none is found. Returns how many processes were killed.
pub(crate) fn kill_leftovers(marker: &str, pgid: Option<i32>) -> usize {
    let mut killed = BTreeSet::new();
    for _ in 0..SWEEP_ROUNDS {
        if let Some(pgid) = pgid {
            kill_group(pgid, libc::SIGKILL);
        }
        let found = job_processes(marker, pgid);
        if found.is_empty() {
            break;
        }
        for pid in found {
            // SAFETY: as in `signal_job`.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed.insert(pid);
        }
    }
    killed.len()
}

/// The live processes of a job: members of group `pgid`, processes whose
/// environment holds `BENCHQ_JOB_RUN=marker`, and descendants of either.
/// Never this process or init. Zombies are left out: they are dead already.
fn job_processes(marker: &str, pgid: Option<i32>) -> Vec<i32> {
    // SAFETY: getpid is always safe.
    let me = unsafe { libc::getpid() };
    let Ok(stats) = proc_stats() else {
        return Vec::new();
    };
    let needle = format!("{RUN_MARKER_VAR}={marker}");
    let live: Vec<&ProcStat> = stats
        .iter()
        .filter(|p| !p.is_zombie() && p.pid > 1 && p.pid != me)
        .collect();
    let seeds: BTreeSet<i32> = live
        .iter()
        .filter(|p| {
            pgid.is_some_and(|g| g > 1 && p.pgrp == g)
                || (!marker.is_empty() && has_env(p.pid, needle.as_bytes()))
        })
        .map(|p| p.pid)
        .collect();
    if seeds.is_empty() {
        return Vec::new();
    }
    let parents: BTreeMap<i32, i32> = stats.iter().map(|p| (p.pid, p.ppid)).collect();
    live.iter()
        .map(|p| p.pid)
        .filter(|&pid| {
            // Up the parent chain (bounded: pids are reused, chains are short).
            let mut at = pid;
            for _ in 0..64 {
                if seeds.contains(&at) {
                    return true;
                }
                match parents.get(&at) {
                    Some(&parent) if parent > 1 && parent != me => at = parent,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Whether `/proc/PID/environ` holds the entry `needle` (`NAME=value`).
/// False when it cannot be read (gone, another user's).
fn has_env(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == needle))
}

/// The fields of `/proc/PID/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    state: u8,
    ppid: i32,
    pgrp: i32,
}

impl ProcStat {
    /// `Z` (zombie) or `X` (dead, being removed).
    fn is_zombie(&self) -> bool {
        matches!(self.state, b'Z' | b'X')
    }
}

/// `pid (comm) state ppid pgrp …`. The command name may hold spaces and
/// parentheses, so the fields are read after its *last* `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        state,
        ppid,
        pgrp,
    })
}

/// Every process visible in `/proc`. Processes that exit while the
/// directory is read are skipped. (`/proc/PID/task/*/children` would be
/// cheaper for our own children, but needs `CONFIG_PROC_CHILDREN`, which
/// many kernels lack.)
fn proc_stats() -> io::Result<Vec<ProcStat>> {
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text) {
            stats.push(stat);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_command_names() {
        assert_eq!(
            parse_stat("42 (sleep) S 7 42 42 0 -1 4194304"),
            Some(ProcStat {
                pid: 42,
                state: b'S',
                ppid: 7,
                pgrp: 42
            })
        );
        assert_eq!(
            parse_stat("43 (a) b) (c) Z 1 40 40 0"),
            Some(ProcStat {
                pid: 43,
                state: b'Z',
                ppid: 1,
                pgrp: 40
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("44 (x) R"), None);
    }

    #[test]
    fn this_process_is_listed() {
        let me = std::process::id() as i32;
        let stats = proc_stats().unwrap();
        let mine = stats.iter().find(|p| p.pid == me).expect("listed");
        assert!(!mine.is_zombie());
    }

    /// A group whose only member is a zombie is not alive, though kill(2)
    /// still finds it.
    #[tokio::test]
    async fn a_group_of_zombies_is_not_alive() {
        let mut command = Command::new("true");
        command.process_group(0);
        let mut child = spawn(command).await.unwrap();
        let pid = child.id().unwrap() as i32;
        // Not waited for: it stays a zombie once it has exited.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if parse_stat(&stat).unwrap().is_zombie() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: signal 0 on our own child.
        assert_eq!(unsafe { libc::kill(-pid, 0) }, 0, "kill(2) sees the zombie");
        assert!(!group_alive(pid));
        assert!(child.wait().await.unwrap().success());
        assert!(!group_alive(pid));
    }

    #[tokio::test]
    async fn a_running_group_is_alive_and_owned_until_waited_for() {
        let mut command = Command::new("sleep");
        command.arg("30").process_group(0).kill_on_drop(true);
        die_with_agent(&mut command);
        let mut child = spawn(command).await.unwrap();
        let pid = child.id().unwrap();
        assert!(owned().contains(&pid));
        assert!(group_alive(pid as i32));
        kill_group(pid as i32, libc::SIGKILL);
        assert!(!child.wait().await.unwrap().success());
        assert!(!owned().contains(&pid));
        assert!(!group_alive(pid as i32));
    }

    /// The guard kills its group once its stdin closes, and not before.
    #[tokio::test]
    async fn a_guard_kills_its_group_when_its_pipe_closes() {
        let mut command = Command::new("sleep");
        command.arg("30").process_group(0).kill_on_drop(true);
        let mut job = spawn(command).await.unwrap();
        let pgid = job.id().unwrap() as i32;
        let mut guard = spawn_guard(pgid, "").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(group_alive(pgid), "the guard acted too early");
        drop(guard.child_mut().stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(5), job.wait())
            .await
            .expect("the guard killed the group")
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(guard.wait().await.unwrap().success());
    }

    /// The guard also kills, by marker, a process of the job that left its
    /// group, and nothing with another marker.
    #[tokio::test]
    async fn a_guard_kills_what_carries_its_marker() {
        let marker = new_run_marker();
        let other = new_run_marker();
        assert_ne!(marker, other);
        let mut leader = Command::new("sleep");
        leader.arg("30").process_group(0).kill_on_drop(true);
        let mut leader = spawn(leader).await.unwrap();
        let pgid = leader.id().unwrap() as i32;
        let daemon = |marker: &str| {
            let mut command = Command::new("sleep");
            command
                .arg("31")
                .env(RUN_MARKER_VAR, marker)
                .process_group(0)
                .kill_on_drop(true);
            command
        };
        let mut marked = spawn(daemon(&marker)).await.unwrap();
        let mut unrelated = spawn(daemon(&other)).await.unwrap();
        let marked_pid = marked.id().unwrap() as i32;
        assert!(job_processes(&marker, None).contains(&marked_pid));
        let mut guard = spawn_guard(pgid, &marker).await.unwrap();
        drop(guard.child_mut().stdin.take());
        for child in [&mut leader, &mut marked] {
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .expect("the guard killed it")
                .unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        }
        assert!(guard.wait().await.unwrap().success());
        assert!(
            group_alive(unrelated.id().unwrap() as i32),
            "killed another job's process"
        );
        unrelated.child_mut().start_kill().unwrap();
        let _ = unrelated.wait().await;
    }

    /// `kill_leftovers` takes the group, the marked processes and their
    /// descendants, even descendants that dropped the marker.
    #[tokio::test]
    async fn leftovers_are_the_group_the_marked_and_their_descendants() {
        let marker = new_run_marker();
        let mut command = Command::new("sh");
        command
            .args(["-c", "env -u BENCHQ_JOB_RUN sleep 32 & echo $!; wait"])
            .env(RUN_MARKER_VAR, &marker)
            .process_group(0)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut marked = spawn(command).await.unwrap();
        let mut out = tokio::io::BufReader::new(marked.child_mut().stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        let unmarked_child: i32 = line.trim().parse().unwrap();
        let found = job_processes(&marker, None);
        assert!(found.contains(&(marked.id().unwrap() as i32)), "{found:?}");
        assert!(found.contains(&unmarked_child), "{found:?}");
        assert!(kill_leftovers(&marker, None) >= 2);
        let status = marked.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(job_processes(&marker, None).is_empty());
        let dead = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_none_or(|p| p.is_zombie())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !dead(unmarked_child) {
            assert!(
                std::time::Instant::now() < deadline,
                "the unmarked descendant {unmarked_child} survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stopping a guard never lets it kill: its group lives on.
    #[tokio::test]
    async fn a_stopped_guard_does_not_kill() {
        let mut command = Command::new("sleep");
        command.arg("30").process_group(0).kill_on_drop(true);
        let mut job = spawn(command).await.unwrap();
        let pgid = job.id().unwrap() as i32;
        let guard = spawn_guard(pgid, "").await.unwrap();
        stop_guard(guard).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(group_alive(pgid));
        kill_group(pgid, libc::SIGKILL);
        let _ = job.wait().await;
    }
}
