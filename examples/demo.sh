#!/usr/bin/env bash
# The benchq demo: a whole fleet on one machine, started from nothing and
# removed again at the end.
#
#   examples/demo.sh                  build, then run the example bench suite
#   examples/demo.sh --postgres-only  only start the throwaway PostgreSQL, print
#                                     its URL and keep it until Enter or Ctrl-C
#
# It builds the workspace binaries (debug), starts a throwaway PostgreSQL in a
# temp dir, a coordinator on it and two agents (namespace slots 0 and 1), each
# running examples/bench-suite/run-scenario.sh per job; enqueues the suite's
# scenarios as one batch with --parallel 2, waits until no job is queued or
# running, and prints the batch. Everything it started is stopped and the temp
# dir removed when it exits, whether it succeeded, failed or was interrupted;
# on failure the end of each component's log is printed first.
#
# Needs: cargo, python3 and the PostgreSQL server binaries (found like the test
# suite does: $BENCHQ_PG_BIN, else initdb on PATH, else the newest
# /usr/lib/postgresql/*/bin). As root, PostgreSQL runs as the `postgres` user.
#
# Environment:
#   BENCHQ_PG_BIN   directory holding initdb and postgres
#   BENCHQ_BIN_DIR  use the benchq binaries in this directory instead of
#                   building (e.g. target/release)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

postgres_only=false
case ${1:-} in
"") ;;
--postgres-only) postgres_only=true ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: $0 [--postgres-only]" >&2
    exit 2
    ;;
esac

say() { printf '==> %s\n' "$*"; }
fail() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

# --- what we need -------------------------------------------------------------

find_pg_bin() {
    local dir initdb versions
    if [[ -n ${BENCHQ_PG_BIN:-} ]]; then
        [[ -x $BENCHQ_PG_BIN/initdb && -x $BENCHQ_PG_BIN/postgres ]] ||
            fail "BENCHQ_PG_BIN=$BENCHQ_PG_BIN does not hold both initdb and postgres"
        echo "$BENCHQ_PG_BIN"
        return
    fi
    if initdb=$(command -v initdb); then
        # A symlink (/usr/local/bin/initdb) may point at the real directory.
        for dir in "$(dirname "$(readlink -f "$initdb")")" "$(dirname "$initdb")"; do
            if [[ -x $dir/postgres ]]; then
                echo "$dir"
                return
            fi
        done
    fi
    # Debian and Ubuntu keep them out of PATH, one directory per major version.
    versions=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4V | tail -n 1 || true)
    if [[ -n $versions && -x $versions/initdb && -x $versions/postgres ]]; then
        echo "$versions"
        return
    fi
    fail "PostgreSQL server binaries not found: install them with \`apt-get install postgresql\` (Debian/Ubuntu) or set BENCHQ_PG_BIN to the directory holding initdb and postgres"
}

command -v python3 >/dev/null ||
    fail "python3 not found (the bench suite and this script use it): apt-get install python3"
pg_bin=$(find_pg_bin)
as_postgres=()
if [[ $(id -u) == 0 ]]; then
    # initdb and postgres refuse to run as root.
    id postgres >/dev/null 2>&1 ||
        fail "running as root, but there is no \`postgres\` user to run PostgreSQL as: create one (useradd --system postgres) or run as a normal user"
    runuser=$(PATH=$PATH:/usr/sbin:/sbin command -v runuser) ||
        fail "running as root, but runuser (util-linux) is missing"
    as_postgres=("$runuser" -u postgres --)
fi

if $postgres_only; then
    bin_dir=
elif [[ -n ${BENCHQ_BIN_DIR:-} ]]; then
    bin_dir=$(cd "$BENCHQ_BIN_DIR" && pwd)
else
    command -v cargo >/dev/null || fail "cargo not found: install Rust from https://rustup.rs"
    say "building benchq (debug; the first build takes a few minutes)"
    cargo build --workspace --bins --quiet
    bin_dir=${CARGO_TARGET_DIR:-$repo/target}/debug
fi
if [[ -n $bin_dir ]]; then
    for b in benchq benchq-coordinator benchq-agent; do
        [[ -x $bin_dir/$b ]] || fail "$bin_dir/$b is missing"
    done
fi

# --- cleanup, whatever happens --------------------------------------------------
#
# Every component's pid goes to $tmp/pids/NAME. `cleanup` stops them in reverse
# order of dependency (agents, coordinator, postgres) and removes $tmp. It runs
# from the EXIT trap (success, failure under `set -e`, Ctrl-C, SIGTERM, SIGHUP),
# and from a watchdog process should this script be killed outright (SIGKILL).

tmp=$(mktemp -d "${TMPDIR:-/tmp}/benchq-demo.XXXXXX")
mkdir "$tmp/pids"
demo_pid=$$
succeeded=false

# stop_pid NAME SIGNAL SECONDS: signal the process, wait for it, SIGKILL after SECONDS.
stop_pid() {
    local name=$1 sig=$2 seconds=$3 pid i
    [[ -f $tmp/pids/$name ]] || return 0
    pid=$(<"$tmp/pids/$name")
    kill -0 "$pid" 2>/dev/null || return 0
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < seconds * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "demo: $name (pid $pid) still running after ${seconds}s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

# The postmaster's pid, from its pid file (it may run under runuser).
postmaster_pid() {
    local f=$tmp/pg/data/postmaster.pid
    [[ -r $f ]] && head -n 1 "$f" >"$tmp/pids/postgres" 2>/dev/null || true
}

# stop_all PG_SIGNAL: the agents first, which drain on SIGTERM (no new leases;
# the running scenario finishes and is reported), then the coordinator, then
# PostgreSQL (INT: fast shutdown, QUIT: immediate).
stop_all() {
    local waiting=()
    stop_pid agent-1 TERM 20 &
    waiting+=($!)
    stop_pid agent-0 TERM 20 &
    waiting+=($!)
    wait "${waiting[@]}"
    stop_pid coordinator TERM 10
    postmaster_pid
    stop_pid postgres "$1" 10
}

show_logs() {
    local log
    for log in "$tmp"/postgres.log "$tmp"/coordinator.log "$tmp"/agent-*.log; do
        [[ -s $log ]] || continue
        printf '\n--- last lines of %s ---\n' "${log##*/}" >&2
        tail -n 25 "$log" >&2
    done
}

cleanup() {
    local status=$?
    trap '' INT TERM HUP # a second Ctrl-C must not cut the cleanup short
    set +e
    stop_all INT # fast shutdown
    # On failure, the logs say why; after a Ctrl-C nobody asked.
    if ! $succeeded && [[ $status != 0 && $status != 130 ]]; then
        show_logs
        echo >&2
    fi
    rm -rf "$tmp"
    return "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Components run in sessions of their own (setsid), so that a Ctrl-C at the
# terminal reaches this script only, which then stops them in order: were the
# coordinator to get it too, it would be gone before the agents could report.
detach=()
if command -v setsid >/dev/null; then detach=(setsid); fi

# The watchdog, in a session of its own too: it acts only if this script
# vanished without running its trap (SIGKILL, to the script or its group).
watchdog="$(declare -f stop_pid postmaster_pid stop_all)"'
trap "" INT HUP
demo_pid=$1 tmp=$2
while kill -0 "$demo_pid" 2>/dev/null; do sleep 1; done
if [[ -d $tmp ]]; then
    stop_all QUIT
    rm -rf "$tmp"
fi'
"${detach[@]}" bash -c "$watchdog" benchq-demo-watchdog "$demo_pid" "$tmp" </dev/null >/dev/null 2>&1 &

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for WHAT SECONDS PID COMMAND...: run COMMAND every 0.1 s until it succeeds;
# fail when SECONDS pass or process PID exits first.
wait_for() {
    local what=$1 seconds=$2 pid=$3 i
    shift 3
    for ((i = 0; i < seconds * 10; i++)); do
        if "$@"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || fail "$what exited during startup"
        sleep 0.1
    done
    fail "$what not ready after ${seconds}s"
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- a throwaway PostgreSQL ----------------------------------------------------
#
# Like tests/support/pg.rs: its own data dir, a free port on 127.0.0.1 and a
# unix socket in the temp dir, durability off. As root, $tmp stays root's (the
# logs live there) and $tmp/pg, data dir and socket, belongs to postgres.

mkdir "$tmp/pg"
if [[ ${#as_postgres[@]} -gt 0 ]]; then
    chmod 711 "$tmp"
    chown postgres: "$tmp/pg"
fi
# HOME and the working directory: postgres cannot read root's.
pg_env=(env HOME="$tmp/pg" LC_ALL=C)

say "starting PostgreSQL ($pg_bin)"
(cd "$tmp/pg" && "${as_postgres[@]}" "${pg_env[@]}" "$pg_bin/initdb" -D "$tmp/pg/data" \
    -A trust -U postgres --no-sync -E UTF8 --locale=C) >"$tmp/initdb.log" 2>&1 ||
    { cat "$tmp/initdb.log" >&2; fail "initdb failed"; }

pg_port=$(free_port)
(cd "$tmp/pg" && exec "${detach[@]}" "${as_postgres[@]}" "${pg_env[@]}" "$pg_bin/postgres" -D "$tmp/pg/data" \
    -p "$pg_port" -k "$tmp/pg" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=400 -c shared_buffers=64MB) </dev/null >"$tmp/postgres.log" 2>&1 &
echo $! >"$tmp/pids/postgres" # runuser's pid, until the pid file names the postmaster

# Ready when the postmaster says so in its pid file (what `pg_ctl -w` reads)
# and the port accepts connections.
pg_ready() {
    [[ $(sed -n 8p "$tmp/pg/data/postmaster.pid" 2>/dev/null) == ready* ]] && tcp_open "$pg_port"
}
wait_for PostgreSQL 30 "$(<"$tmp/pids/postgres")" pg_ready
postmaster_pid
database_url=postgres://postgres@127.0.0.1:$pg_port/postgres
say "PostgreSQL ready: $database_url"

if $postgres_only; then
    echo "Press Enter or Ctrl-C to stop it."
    read -r _ || true
    succeeded=true
    exit 0
fi

# --- the coordinator and two agents --------------------------------------------

coord_port=$(free_port)
coordinator=http://127.0.0.1:$coord_port
"${detach[@]}" "$bin_dir/benchq-coordinator" --listen "127.0.0.1:$coord_port" --database-url "$database_url" \
    --insecure-no-auth \
    </dev/null >"$tmp/coordinator.log" 2>&1 &
echo $! >"$tmp/pids/coordinator"
coordinator_ready() { grep -qs ready "$tmp/coordinator.log" && tcp_open "$coord_port"; }
wait_for "the coordinator" 30 "$(<"$tmp/pids/coordinator")" coordinator_ready
say "coordinator ready: $coordinator"

for slot in 0 1; do
    "${detach[@]}" "$bin_dir/benchq-agent" --coordinator "$coordinator" --slot "$slot" \
        -- "$repo/examples/bench-suite/run-scenario.sh" </dev/null >"$tmp/agent-$slot.log" 2>&1 &
    echo $! >"$tmp/pids/agent-$slot"
done
say "agents started on slots 0 and 1"

# --- the batch --------------------------------------------------------------------

benchq() { "$bin_dir/benchq" --coordinator "$coordinator" "$@"; }

batch=$(benchq enqueue --scenarios-file examples/bench-suite/scenarios.txt \
    --model demo-model --provider demo-provider --parallel 2 | tail -n 1)
batch=${batch//[[:space:]]/}
[[ -n $batch ]] || fail "benchq enqueue printed no batch id"
say "enqueued batch $batch ($(grep -c . examples/bench-suite/scenarios.txt) scenarios)"

# counts JSON -> "queued running passed failed errored"
counts() {
    python3 -c 'import json, sys
c = json.load(sys.stdin).get("counts", {})
print(*(c.get(k, 0) for k in ("queued", "running", "passed", "failed", "errored")))'
}

deadline=$((SECONDS + 300))
last=
while :; do
    if json=$(benchq status "$batch" --output json 2>"$tmp/status.err") &&
        line=$(counts <<<"$json"); then
        read -r queued running passed failed errored <<<"$line"
        if [[ $line != "$last" ]]; then
            printf '    queued %2d  running %d  passed %2d  failed %d  errored %d\n' \
                "$queued" "$running" "$passed" "$failed" "$errored"
            last=$line
        fi
        ((queued + running > 0)) || break
    else
        echo "demo: benchq status failed (retrying): $(tail -n 1 "$tmp/status.err")" >&2
    fi
    ((SECONDS < deadline)) || fail "batch $batch not done after 5 minutes"
    sleep 0.5
done

echo
benchq status "$batch"
echo
python3 -c 'import json, sys
jobs = json.load(sys.stdin).get("jobs", [])
by_id = {j.get("scenario_id"): j for j in jobs}
print("What to look for:")
for scenario, note in [("flaky-infra", "an infra error on attempt 1, retried"),
                       ("broken-infra", "an infra error on every attempt")]:
    j = by_id.get(scenario)
    if j:
        print("  %s: %s after %s attempt(s): %s" % (scenario, j.get("state"), j.get("attempt"), note))
failed = [j.get("scenario_id") for j in jobs if j.get("state") == "failed"]
if failed:
    print("  %s: failed, their tests fail (a result: never retried)" % ", ".join(failed))' \
    <<<"$json" || true
succeeded=true
