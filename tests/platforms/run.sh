#!/usr/bin/env bash
# Platform test: the Docker image on three container platforms that stand in for where users
# deploy it, each checked for the isolation tier it must give and then attacked with the
# black-box suite (tests/http, external mode: contract, attacks, seccomp, isolation, ...).
#
#   1. runc with --cap-add SYS_ADMIN --security-opt seccomp=unconfined (and the README's other
#      flags): a host that allows namespaces. PYEXEC_ISOLATION=full must run in tier full.
#   2. runc with Docker's default seccomp profile and capabilities: a stand-in for a restrictive
#      Cloud Run second generation. PYEXEC_ISOLATION=full must refuse (503/500, naming what is
#      missing and the fix); PYEXEC_ISOLATION=auto must pick tier restricted.
#   3. runsc (gVisor): a stand-in for Cloud Run's first generation. The same as 2.
#
#   tests/platforms/run.sh [PYTEST ARGS...]        (or: make platform-test)
#
# Needs a Docker engine with runsc registered as runtime "runsc" (../shared/tools/docker-up
# --gvisor does that: Debian's runsc with --network=host --ignore-cgroups). Containers use
# --network host, and every request goes to 127.0.0.1.
#
# Environment: NSJAIL_SOURCE, PYEXEC_IMAGE, PYTHON as for tests/image/run.sh;
# PYEXEC_SKIP_BUILD=1 tests the image already tagged PYEXEC_IMAGE.
# Cases the restricted tier does not give are skipped by name with the reason from
# docs/security.md's tier table (pytest -rs lists them); nothing else may be skipped silently.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${PYEXEC_IMAGE:-pyexec:image-test}
python=${PYTHON:-/usr/bin/python3}
logdir=$(mktemp -d /tmp/pyexec-platforms.XXXXXX)
name=
summary=()
status=0

say() { printf 'platform-test: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; status=1; }

# shellcheck disable=SC2317  # run by the trap
cleanup() {
	if [[ -n $name ]]; then docker rm -f "$name" >/dev/null 2>&1 || true; fi
	say "logs kept in $logdir"
}
trap cleanup EXIT

if ! docker info 2>/dev/null | grep -q 'Runtimes:.*runsc'; then
	say "runsc is not a runtime of this Docker engine; run ../shared/tools/docker-up --gvisor"
	exit 1
fi

if [[ ${PYEXEC_SKIP_BUILD:-} != 1 ]]; then
	build_args=()
	if [[ -n ${NSJAIL_SOURCE:-} ]]; then
		build_args+=(--build-arg "NSJAIL_SOURCE=$NSJAIL_SOURCE")
	fi
	say "building $image"
	docker build --network host "${build_args[@]}" -t "$image" . >"$logdir/build.log" 2>&1 ||
		{ tail -n 30 "$logdir/build.log" >&2; exit 1; }
fi

say "checking that no world-readable file of $image holds a secret (the restricted tier can read them)"
docker run --rm --network none --entrypoint /usr/bin/python3 \
	-v "$PWD/tests/platforms/no_secrets.py:/no_secrets.py:ro" "$image" /no_secrets.py ||
	fail "the image holds a secret readable by a restricted-tier script"

free_port() {
	"$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start LABEL ISOLATION DOCKER-FLAGS...: starts the container and waits until /healthz answers
# (any status). Sets name, port and log.
start() {
	local label=$1 isolation=$2
	shift 2
	port=$(free_port)
	name="pyexec-platform-$label-$$"
	log="$logdir/$label-$isolation.log"
	# The canaries are what the suite puts on servers it starts: no jail may ever see them.
	docker run -d --name "$name" --network host -e PORT="$port" \
		-e PYEXEC_ISOLATION="$isolation" -e PYEXEC_HEALTH_DETAILS=1 \
		-e PYEXEC_TEST_SECRET=hunter2 -e PYEXEC_TEST_CANARY_PLAIN=hunter2-plain \
		"$@" "$image" >/dev/null
	docker logs -f "$name" >"$log" 2>&1 &
	"$python" - "$port" <<'PY'
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.3)
sys.exit("no answer from /healthz within 60 s")
PY
}

# stop: SIGTERM, as Cloud Run sends it; pyexecd must drain and exit 0.
stop() {
	docker stop -t 20 "$name" >/dev/null
	local code
	code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
	docker rm -f "$name" >/dev/null
	name=
	[[ $code == 0 ]] || fail "exited $code after SIGTERM (want 0)"
}

# check_health WANT-STATUS WANT-TIER: /healthz's status and isolation tier ("null": none).
check_health() {
	"$python" - "$port" "$1" "$2" <<'PY'
import json, sys, urllib.error, urllib.request
port, want_status, want_tier = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        status, body = r.status, json.load(r)
except urllib.error.HTTPError as e:
    status, body = e.code, json.load(e)
iso = body.get("isolation") or {}
print(f"  /healthz {status}: tier {iso.get('tier')}, host {json.dumps(iso.get('host'))}",
      file=sys.stderr)
tier = iso.get("tier") or "null"
if status != want_status or tier != want_tier:
    sys.exit(f"want {want_status} and tier {want_tier}, got {status} and tier {tier}: {body}")
PY
}

# check_refusal: /execute answers 500 with a message that names what is missing and the fix.
check_refusal() {
	"$python" - "$port" <<'PY'
import json, sys, urllib.error, urllib.request
port = sys.argv[1]
req = urllib.request.Request(f"http://127.0.0.1:{port}/execute",
                             data=json.dumps({"script": "def main():\n    return 1\n"}).encode(),
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=10)
    sys.exit("/execute ran a script although the required tier is not available")
except urllib.error.HTTPError as e:
    body = json.load(e)
    print(f"  /execute {e.code}: {body['message']}", file=sys.stderr)
    message = body["message"]
    for needed in ("isolation tier full", "Namespace", "PYEXEC_ISOLATION=auto",
                   "--cap-add SYS_ADMIN"):
        if needed not in message:
            sys.exit(f"the message does not say {needed!r}: {message}")
    if e.code != 500 or body["error"] != "internal":
        sys.exit(f"want 500 internal, got {e.code} {body['error']}")
PY
}

# suite LABEL: the black-box suite against the running container.
suite() {
	local out="$logdir/$1-pytest.txt" rc=0
	PYEXEC_TEST_URL="http://127.0.0.1:$port" PYEXEC_TEST_SERVER_LOG="$log" \
		"$python" -m pytest -q -rs -p no:cacheprovider tests/http "${pytest_args[@]}" \
		>"$out" 2>&1 || rc=$?
	grep -E '^SKIPPED .*(tier (table|restricted)|under gVisor)' "$out" | sed 's/^/  /' >&2 || true
	local last
	last=$(tail -n 1 "$out")
	say "  $last"
	summary+=("$1: $last")
	((rc == 0)) || { { grep -E '^(FAILED|ERROR) ' "$out" >&2 || true; }; fail "$1: the suite failed"; }
}

pytest_args=("$@")
full_flags=(--cap-add SYS_ADMIN --security-opt seccomp=unconfined
            --security-opt apparmor=unconfined --security-opt systempaths=unconfined)

# platform LABEL WANT-REFUSAL DOCKER-FLAGS...
platform() {
	local label=$1 refuses=$2
	shift 2
	say "== $label: docker run $*"
	if [[ $refuses == yes ]]; then
		start "$label" full "$@"
		if check_health 503 null && check_refusal; then
			summary+=("$label: PYEXEC_ISOLATION=full refuses (503 /healthz, 500 /execute)")
		else
			fail "$label: PYEXEC_ISOLATION=full did not fail closed"
		fi
		stop
		start "$label" auto "$@"
		if check_health 200 restricted; then
			summary+=("$label: PYEXEC_ISOLATION=auto picks tier restricted")
		else
			fail "$label: PYEXEC_ISOLATION=auto did not pick tier restricted"
		fi
	else
		start "$label" full "$@"
		if check_health 200 full; then
			summary+=("$label: PYEXEC_ISOLATION=full runs in tier full")
		else
			fail "$label: PYEXEC_ISOLATION=full did not run in tier full"
		fi
	fi
	suite "$label"
	stop
}

platform runc-privileged no "${full_flags[@]}"
platform runc-default yes
platform runsc yes --runtime=runsc

say "summary:"
for line in "${summary[@]}"; do say "  $line"; done
exit "$status"
