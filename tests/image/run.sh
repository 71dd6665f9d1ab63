#!/usr/bin/env bash
# Image test: build the Docker image, check its size against the budget, check that every
# module that imports from Debian's packages still imports in it, start it with the
# README's run command (adapted to a host without a bridge network: --network host and a free
# PORT), wait for /healthz, run the black-box HTTP suite (tests/http) against the container,
# then check that it stops cleanly on SIGTERM. The container is removed on every exit.
#
#   tests/image/run.sh [PYTEST ARGS...]          (or: make image-test)
#
# Environment:
#   NSJAIL_SOURCE   passed to `docker build --build-arg NSJAIL_SOURCE=...`: nsjail's source
#                   archive inside the build context (e.g. .local/nsjail-3.6-src.tar.gz), for
#                   hosts that cannot reach GitHub
#   PYEXEC_IMAGE    image tag to build and test (default pyexec:image-test)
#   PYTHON          interpreter for pytest (default /usr/bin/python3)
#   PYEXEC_RUN_FLAGS  the privilege flags for `docker run` (default: the README's)
# Tests that need a server with other settings (small_server, server_factory) are skipped in
# this mode; `make http` runs them against local servers.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${PYEXEC_IMAGE:-pyexec:image-test}
python=${PYTHON:-/usr/bin/python3}
budget_mb=150
name="pyexec-image-test-$$"
log=$(mktemp /tmp/pyexec-image-test.XXXXXX.log)
log_pid=

say() { printf 'image-test: %s\n' "$*" >&2; }

# shellcheck disable=SC2317  # run by the trap
cleanup() {
	docker rm -f "$name" >/dev/null 2>&1 || true
	if [[ -n $log_pid ]]; then kill "$log_pid" 2>/dev/null || true; fi
	say "server log kept in $log"
}
trap cleanup EXIT

# --- build ------------------------------------------------------------------------------------
build_args=()
if [[ -n ${NSJAIL_SOURCE:-} ]]; then
	build_args+=(--build-arg "NSJAIL_SOURCE=$NSJAIL_SOURCE")
fi
say "building $image${NSJAIL_SOURCE:+ with NSJAIL_SOURCE=$NSJAIL_SOURCE}"
docker build --network host "${build_args[@]}" -t "$image" .

# --- size -------------------------------------------------------------------------------------
size=$(docker image inspect -f '{{.Size}}' "$image")
size_mb=$(( (size + 500000) / 1000000 ))
if (( size > budget_mb * 1000000 )); then
	say "FAIL: $image is $size bytes ($size_mb MB), over the budget of $budget_mb MB"
	exit 1
fi
say "size: $size bytes ($size_mb MB; budget $budget_mb MB)"

# --- imports: every module importable from Debian's packages still imports in the image ------
# The Dockerfile's "packages" stage is Debian's python3, numpy and pandas before the image's
# clean-up (scripts/image-rootfs); tests/image/imports.py lists what imports in each.
say "comparing importable modules with the packages stage"
# (The classic builder builds the stages before the target too: same arguments, all cached.)
docker build --network host -q "${build_args[@]}" --target packages -t "$image-packages" . >/dev/null
imports() {
	docker run --rm --network none --entrypoint /usr/bin/python3 \
		-v "$PWD/tests/image/imports.py:/tmp/imports.py:ro" "$1" /tmp/imports.py
}
before=$(imports "$image-packages" | LC_ALL=C sort)
after=$(imports "$image" | LC_ALL=C sort)
lost=$(LC_ALL=C comm -23 <(echo "$before") <(echo "$after"))
say "importable modules: $(wc -l <<<"$before") from the packages, $(wc -l <<<"$after") in the image" \
	"($(grep -c '^numpy' <<<"$after") of numpy, $(grep -c '^pandas' <<<"$after") of pandas)"
if [[ -n $lost ]]; then
	say "FAIL: these modules import from Debian's packages but not in the image:"
	echo "$lost" >&2
	exit 1
fi

# --- run: the README's command, with --network host and a free port -------------------------
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The canary variables are the ones the suite puts on servers it starts itself: the jail must
# never see them (tests/http/pyexec_testlib.py, CANARY_ENV).
# PYEXEC_RUN_FLAGS replaces the privilege flags, to try narrower ones.
if [[ -n ${PYEXEC_RUN_FLAGS:-} ]]; then
	read -r -a run_flags <<<"$PYEXEC_RUN_FLAGS"
else
	run_flags=(--cap-add SYS_ADMIN --security-opt seccomp=unconfined
	           --security-opt apparmor=unconfined --security-opt systempaths=unconfined)
fi
say "docker run ${run_flags[*]}"
# PYEXEC_HEALTH_DETAILS: the suite learns the kernel (gVisor or not) from /healthz.
docker run -d --name "$name" --network host -e PORT="$port" -e PYEXEC_HEALTH_DETAILS=1 \
	-e PYEXEC_TEST_SECRET=hunter2 -e PYEXEC_TEST_CANARY_PLAIN=hunter2-plain \
	"${run_flags[@]}" "$image" >/dev/null
docker logs -f "$name" >"$log" 2>&1 &
log_pid=$!

say "waiting for http://127.0.0.1:$port/healthz"
if ! "$python" - "$port" "$name" <<'PY'
import subprocess, sys, time, urllib.error, urllib.request
port, name = sys.argv[1], sys.argv[2]
deadline, last = time.monotonic() + 60, None
while time.monotonic() < deadline:
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                           capture_output=True, text=True).stdout.strip()
    if state != "true":
        sys.exit(f"the container stopped (running={state!r})")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            print(r.status, r.read().decode(), file=sys.stderr)
            sys.exit(0)
    except urllib.error.HTTPError as e:
        last = f"{e.code} {e.read().decode()}"
    except OSError as e:
        last = repr(e)
    time.sleep(0.5)
sys.exit(f"no 200 from /healthz within 60 s (last: {last})")
PY
then
	say "FAIL: the container did not become healthy; its log:"
	docker logs "$name" >&2 || true
	exit 1
fi

# --- the black-box suite ----------------------------------------------------------------------
# The suite finds pyexecd's pid (for its kill and /proc tests) as the process listening on the
# port: PID 1 of the container is pyexecd's init half, the server its child.
status=0
PYEXEC_TEST_URL="http://127.0.0.1:$port" PYEXEC_TEST_SERVER_LOG="$log" \
	"$python" -m pytest -q -rs tests/http "$@" || status=$?

# --- still up, no zombies, then a clean stop on SIGTERM (what Cloud Run sends) --------------
if [[ $(docker inspect -f '{{.State.Running}}' "$name") != true ]]; then
	say "FAIL: the container died during the suite; its log:"
	tail -n 50 "$log" >&2
	exit 1
fi
# A run's processes re-parented to the container's PID 1 (when an nsjail exits before its
# jailed process is reaped) must be reaped by it, and pyexecd must reap its own children. A
# zombie may live for an instant, so only one seen on three looks a second apart counts.
init_pid=$(docker inspect -f '{{.State.Pid}}' "$name")
server_pid=$(ps -o pid=,comm= --ppid "$init_pid" | awk '$2 == "pyexecd" { print $1 }' || true)
for _ in 1 2 3; do
	zombies=$(ps -e -o ppid=,pid=,stat=,comm= | awk -v a="$init_pid" -v b="${server_pid:-0}" \
		'($1 == a || $1 == b) && $3 ~ /^Z/ { print $2 "(" $4 ")" }' | tr '\n' ' ')
	[[ -z $zombies ]] && break
	sleep 1
done
if [[ -n $zombies ]]; then
	say "FAIL: zombie processes in the container: $zombies"
	status=1
fi
docker stop -t 20 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
if [[ $code != 0 ]]; then
	say "FAIL: pyexecd exited $code after SIGTERM (want 0)"
	status=1
else
	say "stopped on SIGTERM with exit status 0"
fi
exit "$status"
