#!/usr/bin/env bash
# Runs one scenario of the example bench suite, the way a benchq agent runs a
# job: `benchq-agent ... -- examples/bench-suite/run-scenario.sh`.
#
# A scenario is a directory scenarios/<id>/ holding a small Python program
# (solution.py, as an agent under test left it), its tests (test_*.py) and
# optionally preflight.sh, which stands for the infrastructure the scenario
# needs (a tool server, ...). The runner copies the scenario to a work dir of
# its own, runs the preflight, then the tests.
#
# Exit code, as benchq reads it:
#   0  the tests pass                      -> PASSED
#   1  the tests ran and some failed       -> FAILED (a result, never retried)
#   2  bad invocation (unknown scenario)   -> ERROR
#   3  infra error (preflight failed, no python3, ...) -> ERROR, retried
#
# Environment (set by the agent; only BENCHQ_SCENARIO_ID is required):
#   BENCHQ_SCENARIO_ID   which scenario to run
#   BENCHQ_ATTEMPT       1 on the first attempt (default 1)
#   BENCHQ_NAMESPACE     namespace the job runs in, empty when none
#   BENCHQ_NAMESPACE_SLOT, BENCHQ_MODEL, BENCHQ_PROVIDER, BENCHQ_JOB_FILE: logged
#   BENCHQ_RESULT_FILE   when set, receives {"tests": N, "passed": M, "seconds": S}
#
# Standalone: BENCHQ_SCENARIO_ID=fizzbuzz BENCHQ_ATTEMPT=1 examples/bench-suite/run-scenario.sh
set -euo pipefail

readonly EXIT_FAILED=1 EXIT_USAGE=2 EXIT_INFRA=3

suite=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scenario=${BENCHQ_SCENARIO_ID:-}
attempt=${BENCHQ_ATTEMPT:-1}
namespace=${BENCHQ_NAMESPACE:-}
started=$(date +%s.%N)

log() { printf '[%s ns=%s attempt=%s] %s\n' "${scenario:-?}" "${namespace:-none}" "$attempt" "$*"; }
die() { # die CODE MESSAGE
    local code=$1
    shift
    log "error: $*" >&2
    exit "$code"
}

# --- what to run ---
[[ -n $scenario ]] || die "$EXIT_USAGE" "BENCHQ_SCENARIO_ID is not set (one of: $(tr '\n' ' ' <"$suite/scenarios.txt"))"
# An id names a directory: no path tricks.
[[ $scenario =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "$EXIT_USAGE" "invalid scenario id '$scenario'"
source_dir=$suite/scenarios/$scenario
[[ -d $source_dir ]] || die "$EXIT_USAGE" "unknown scenario '$scenario' (no $source_dir)"
command -v python3 >/dev/null || die "$EXIT_INFRA" "python3 not found: the scenarios are Python programs"

log "scenario $scenario, model ${BENCHQ_MODEL:-none}/${BENCHQ_PROVIDER:-none}, namespace ${namespace:-none} (slot ${BENCHQ_NAMESPACE_SLOT:-0}), attempt $attempt${BENCHQ_JOB_FILE:+, job file $BENCHQ_JOB_FILE}"

# --- a work dir per run, named after the namespace, removed whatever happens ---
work=$(mktemp -d "${TMPDIR:-/tmp}/benchq-${namespace:-nons}-$scenario-a$attempt.XXXXXX") ||
    die "$EXIT_INFRA" "cannot create a work dir"
trap 'rm -rf "$work"' EXIT
# The agent stops a job with SIGTERM to its process group: leave through the EXIT trap.
trap 'log "stopped by SIGTERM"; exit 143' TERM
trap 'log "interrupted"; exit 130' INT
cp -R "$source_dir/." "$work/"
cd "$work"
log "work dir $work"

# --- preflight: the infrastructure the scenario needs ---
if [[ -f preflight.sh ]]; then
    if ! preflight_output=$(bash preflight.sh 2>&1); then
        # Multi-line output in full; its last line is the error message.
        [[ $preflight_output != *$'\n'* ]] || printf '%s\n' "$preflight_output"
        die "$EXIT_INFRA" "preflight failed: ${preflight_output##*$'\n'}"
    fi
    [[ -z $preflight_output ]] || log "preflight: $preflight_output"
fi

# --- the tests ---
# The harness prints unittest's report, writes the counts for the metrics and
# exits 0 when every test passed, 1 otherwise (tests that do not even import
# count as failed: the program under test is broken, which is a result).
set +e
PYTHONDONTWRITEBYTECODE=1 python3 - "$work" "$started" "${BENCHQ_RESULT_FILE:-}" <<'PY'
import json, sys, time, unittest

work, started, result_file = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sys.path.insert(0, work)
suite = unittest.defaultTestLoader.discover(work, pattern="test_*.py", top_level_dir=work)
result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
tests = result.testsRun
passed = tests - len(result.failures) - len(result.errors) - len(result.unexpectedSuccesses)
metrics = {"tests": tests, "passed": passed, "seconds": round(time.time() - started, 3)}
print(json.dumps(metrics))
if result_file:
    with open(result_file, "w") as f:
        json.dump(metrics, f)
sys.exit(0 if tests > 0 and passed == tests else 1)
PY
status=$?
set -e

case $status in
0) log "PASSED" ;;
1)
    log "FAILED: some tests fail"
    exit "$EXIT_FAILED"
    ;;
*) die "$EXIT_INFRA" "the test harness itself failed (python3 exit $status)" ;;
esac
