# Run by run-scenario.sh (bash, in the work dir) before the tests; a non-zero status is an infra error.
# A real connection attempt to a tool server that is not there.
tool_server=127.0.0.1:1
if ! python3 - "$tool_server" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    socket.create_connection((host, int(port)), timeout=2).close()
except OSError as e:
    print(f"tool server unreachable at {sys.argv[1]}: {e.strerror or e}")
    sys.exit(1)
PY
then
    exit 1
fi
