# Run by run-scenario.sh (bash, in the work dir) before the tests; a non-zero status is an infra error.
# A tool server that is not up yet on the first attempt: retrying fixes it.
if [ "${BENCHQ_ATTEMPT:-1}" = 1 ]; then
    echo "tool server not ready yet: connection refused (attempt ${BENCHQ_ATTEMPT:-1}); try again"
    exit 1
fi
echo "tool server ready"
