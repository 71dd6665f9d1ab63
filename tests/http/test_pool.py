"""Ready jails, admission control and /metrics (functional tests: no timing targets here;
speed lives in `make bench`)."""

import concurrent.futures
import os
import re
import signal
import socket
import time

import pytest

from pyexec_testlib import (COUNT_MARKED, check_healthy, expect_error, expect_ok,
                            expect_result)

SLEEP = "import time\ndef main():\n    time.sleep({s})\n    return 'slept'\n"


def pool_server(server_factory, **env):
    env.setdefault("PYEXEC_POOL", "2")
    return server_factory(fresh=True, **env)


def wait_ready(srv, n=1, within=15):
    """Waits until /healthz reports at least n ready jails."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        resp = srv.get("/healthz")
        if resp.status == 200 and resp.json().get("poolReady", 0) >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"the pool never had {n} ready jails: {srv.get('/healthz')!r}")


def metrics(srv):
    """Parses /metrics strictly as Prometheus text; returns {series: value}."""
    resp = srv.get("/metrics")
    assert resp.status == 200, resp
    assert (resp.header("Content-Type") or "").startswith("text/plain"), resp
    values, typed = {}, set()
    for line in resp.body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            typed.add(name)
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = re.fullmatch(r'([a-z_]+)(\{[a-z_]+="[^"]*"\})? (\S+)', line)
        assert m, f"not Prometheus text: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in typed or base in typed, f"series without TYPE: {line!r}"
        values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def jail_runner_pids(srv):
    """Pids of the runner processes of srv's jails (seen from the host's /proc)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found = []
    for pid in parents:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if os.path.basename(cmd.split(b"\0")[0]) == b"nsjail":
                continue  # its command line names the runner too
            # A zygote's run carries the zygote's command line; the zygote itself is
            # nsjail's child, a run never is.
            if b"zygote.py" in cmd:
                with open(f"/proc/{parents.get(pid, 0)}/cmdline", "rb") as f:
                    if b"nsjail" in f.read():
                        continue
            elif b"runner.py" not in cmd:
                continue
        except OSError:
            continue
        p = pid
        while p in parents and p > 1:
            p = parents[p]
            if p == srv.pid:
                found.append(pid)
                break
    return found


# Scripts covering the contract: a ready jail must answer exactly like a cold one.
SAME_ANSWER_SCRIPTS = [
    "def main():\n    return {'answer': 42}\n",
    "def main():\n    print('hi', 'é')\n    return ['ü', 1.5, None, True]\n",
    "import math\ndef main():\n    return math.factorial(40)\n",
    "def main(:\n    pass\n",
    "x = 1\n",
    "main = 3\n",
    "def main():\n    print('before')\n    raise ValueError('nope')\n",
    "def main():\n    return {1, 2}\n",
    "def main():\n    return None\n",
    "import sys\ndef main():\n    sys.exit(3)\n",
    "import os\ndef main():\n    os._exit(4)\n",
    "import os\ndef main():\n    os.kill(os.getpid(), 9)\n",
    "async def main():\n    return 'awaited'\n",
    "def main():\n    return __name__\n",
    # The same in both tiers: an empty directory of its own, a uid that is not root.
    "import os\ndef main():\n    return [os.getcwd() == os.environ['TMPDIR'],\n"
    "            os.listdir('.'), os.getuid() != 0]\n",
    "def main():\n    return 'x' * 2000000\n",
    "def main():\n    a = []\n    while True:\n        a.append(' ' * 10**6)\n",
    "import numpy as np\ndef main():\n    return (np.arange(4).reshape(2, 2) @ np.ones((2, 2))).tolist()\n",
]


def comparable(resp):
    return resp.status, resp.json(), resp.header("X-Stdout-Truncated")


def test_ready_jail_answers_like_a_cold_one(server_factory):
    cold = server_factory(fresh=True, PYEXEC_POOL="0")
    ready = pool_server(server_factory)
    for script in SAME_ANSWER_SCRIPTS:
        wait_ready(ready)
        a, b = cold.execute(script), ready.execute(script)
        assert comparable(a) == comparable(b), f"{script!r}:\ncold  {a!r}\nready {b!r}"
    # and a timeout, counted the same way
    wait_ready(ready)
    a, b = cold.execute(SLEEP.format(s=5), timeout=1), ready.execute(SLEEP.format(s=5), timeout=1)
    assert comparable(a)[:2] == comparable(b)[:2]
    assert a.json()["error"] == "timeout"
    m = metrics(ready)
    assert m['pyexec_requests_total{outcome="ok"}'] >= 5, m


def test_ready_jail_is_never_used_twice(server_factory):
    """Each run leaves marks everywhere it can (a file in /tmp, a global in a preloaded module,
    the environment, a child process); the next run, on another ready jail, sees none."""
    srv = pool_server(server_factory)
    script = '''
import os, subprocess, sys, tempfile, time
import numpy
MARKER = os.path.join(tempfile.gettempdir(), "marker")
CHILD = "pyexec-pool-child-marker"
''' + COUNT_MARKED + '''
def main():
    seen = [os.path.exists(MARKER), hasattr(numpy, "pyexec_marker"),
            "PYEXEC_MARKER" in os.environ, count_marked(CHILD)]
    open(MARKER, "w").write("x")
    numpy.pyexec_marker = 1
    os.environ["PYEXEC_MARKER"] = "1"
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", CHILD],
                     start_new_session=True)
    return seen
'''
    for _ in range(6):
        wait_ready(srv)
        seen = expect_ok(srv.execute(script))["result"]
        assert seen == [False, False, False, 0], f"an earlier run left a mark: {seen}"


def test_killed_ready_jail_is_replaced_not_used(server_factory):
    srv = pool_server(server_factory, PYEXEC_POOL="2")
    wait_ready(srv, 2)
    before = metrics(srv)
    victims = jail_runner_pids(srv)
    assert len(victims) >= 2, f"expected the ready jails' runners, found {victims}"
    killed = 0
    for pid in victims:
        # A jail's init and its script's process are both listed: once one is killed, the
        # server may end the other first.
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    assert killed >= 2, victims
    # kill() returns before the kernel has ended them: wait until they are dead (gone, or a
    # zombie), no longer, so the server cannot have heard of it yet.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in victims):
        time.sleep(0.001)
    # Immediately: the request must not get a dead jail.
    expect_result(srv.execute("def main():\n    return 'fresh'\n"), "fresh")
    wait_ready(srv, 2)
    after = metrics(srv)
    died = 'pyexec_pool_discarded_total{reason="died"}'
    assert after[died] >= before[died] + 2, (before[died], after[died])
    assert not set(victims) & set(jail_runner_pids(srv))
    check_healthy(srv)


def test_deadline_counts_from_hand_over(server_factory):
    """A jail that waited in the pool longer than the timeout still gives the script its full
    time: the clock starts when the script is handed over."""
    srv = pool_server(server_factory, PYEXEC_POOL="1")
    wait_ready(srv)
    time.sleep(2.5)  # the ready jail is now older than the run's timeout
    resp = srv.execute(SLEEP.format(s=1.2), timeout=2)
    expect_result(resp, "slept")
    assert int(resp.header("X-Execution-Time-Ms")) < 2000, resp


def test_queue_bound_gives_429(server_factory):
    srv = server_factory(fresh=True, PYEXEC_CONCURRENCY="1", PYEXEC_QUEUE="1")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(srv.execute, SLEEP.format(s=2), 10)
        time.sleep(0.5)
        queued = pool.submit(srv.execute, SLEEP.format(s=0), 10)
        time.sleep(0.5)
        refused = srv.execute(SLEEP.format(s=0), 10)
        body = expect_error(refused, 429, "busy")
        assert refused.header("Retry-After") and refused.header("Retry-After").isdigit(), refused
        assert "retry" in body["message"].lower()
        m = metrics(srv)
        assert m["pyexec_queue_depth"] == 1 and m["pyexec_running"] == 1, m
        expect_result(running.result(), "slept")
        expect_result(queued.result(), "slept")
    assert metrics(srv)['pyexec_requests_total{outcome="busy"}'] == 1


def open_request(srv, script, timeout=30):
    """Sends an /execute request on a raw socket and returns the socket without reading."""
    import json
    body = json.dumps({"script": script, "timeout": timeout}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock


def test_disconnected_client_frees_its_slot_and_jail(server_factory):
    srv = server_factory(fresh=True, PYEXEC_CONCURRENCY="1", PYEXEC_QUEUE="0",
                         PYEXEC_POOL="0")
    sock = open_request(srv, SLEEP.format(s=30))
    time.sleep(1.0)  # running now
    victims = jail_runner_pids(srv)
    assert len(victims) >= 1
    sock.close()
    time.sleep(0.5)
    # The slot is free again, and the jail is gone.
    expect_result(srv.execute(SLEEP.format(s=0)), "slept")
    deadline = time.monotonic() + 2
    while set(victims) & set(jail_runner_pids(srv)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(victims) & set(jail_runner_pids(srv)), victims
    assert metrics(srv)['pyexec_requests_total{outcome="client_gone"}'] == 1


def test_disconnected_queued_client_frees_its_place(server_factory):
    srv = server_factory(fresh=True, PYEXEC_CONCURRENCY="1", PYEXEC_QUEUE="1")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(srv.execute, SLEEP.format(s=2.5), 10)
        time.sleep(0.5)
        sock = open_request(srv, SLEEP.format(s=0))
        time.sleep(0.3)
        assert metrics(srv)["pyexec_queue_depth"] == 1
        sock.close()
        time.sleep(0.5)  # queued requests look at their client every 100 ms
        assert metrics(srv)["pyexec_queue_depth"] == 0
        # its place is free: this one queues instead of getting 429
        expect_result(srv.execute(SLEEP.format(s=0)), "slept")
        expect_result(running.result(), "slept")


def test_metrics_parse_and_move(server_factory):
    srv = pool_server(server_factory)
    wait_ready(srv)
    before = metrics(srv)
    for name in ("pyexec_pool_ready", "pyexec_pool_size", "pyexec_queue_depth",
                 "pyexec_running", "pyexec_slots", "pyexec_run_seconds_count",
                 "pyexec_queue_wait_seconds_count", "pyexec_jail_start_seconds_count"):
        assert name in before, name
    assert before["pyexec_pool_size"] == 2
    expect_result(srv.execute("def main():\n    return 1\n"), 1)
    srv.execute("def main():\n    1/0\n")
    srv.post_json("/execute", b"{")
    after = metrics(srv)
    ok, exc, bad = ('pyexec_requests_total{outcome="%s"}' % o
                    for o in ("ok", "exception", "invalid_json"))
    assert after[ok] == before[ok] + 1
    assert after[exc] == before[exc] + 1
    assert after[bad] == before[bad] + 1
    assert after["pyexec_run_seconds_count"] == before["pyexec_run_seconds_count"] + 2
    assert after["pyexec_jail_start_seconds_count"] > 0
    inf = 'pyexec_run_seconds_bucket{le="+Inf"}'
    assert after[inf] == after["pyexec_run_seconds_count"]
    resp = srv.request("POST", "/metrics")
    expect_error(resp, 405, "method_not_allowed")


def test_a_jail_started_for_a_waiting_request_lives_as_long_as_the_pools(server_factory):
    """A request that finds none ready has a jail started for it; when it takes another, that
    one waits in the pool for a later request. Its backstop wall-clock limit must allow for the
    wait, like the pool's own: else a later run on it is killed before its timeout."""
    # One-shot jails (the zygote's forks carry no wall-clock backstop). The cold jail's
    # backstop is max timeout + start timeout + 5 = 10 s.
    srv = pool_server(server_factory, PYEXEC_POOL="1", PYEXEC_ZYGOTE="off", PYEXEC_PRELOAD="",
                      PYEXEC_CONCURRENCY="4", PYEXEC_MAX_TIMEOUT="3", PYEXEC_TIMEOUT="3",
                      PYEXEC_START_TIMEOUT="2", PYEXEC_HEALTH_DETAILS="on")
    quick = "def main():\n    return 1\n"
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for _ in range(5):  # a burst that leaves a jail started for a request in the pool
            wait_ready(srv)
            t0 = time.monotonic()
            for f in [ex.submit(srv.execute, quick) for _ in range(4)]:
                expect_result(f.result(), 1)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and srv.get("/healthz").json()["poolReady"] < 2:
                time.sleep(0.05)
            ready = srv.get("/healthz").json()["poolReady"]
            if ready >= 2:
                break
        assert ready >= 2, ready
        # Handed over 9 s after its start (its backstop still a second away), each ready jail
        # runs a script for 2.9 s of its 3.
        time.sleep(max(0.0, t0 + 9 - time.monotonic()))
        runs = [ex.submit(srv.execute, SLEEP.format(s=2.9), timeout=3) for _ in range(ready)]
        for f in runs:
            expect_result(f.result(), "slept")


def test_a_start_that_fails_for_one_waiting_request_does_not_fail_another(server_factory):
    """Restricted tier, three run uids: a long run holds one, the pool's refill another. Two
    requests that then find none ready each have a jail started: one start gets the last uid,
    the other none. The request that finds none is busy; the other is not failed with it."""
    srv = pool_server(server_factory, PYEXEC_ISOLATION="restricted", PYEXEC_POOL="1",
                      PYEXEC_RUN_UIDS="3", PYEXEC_CONCURRENCY="4")
    wait_ready(srv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metrics(srv)["pyexec_run_uids_cleaning"] > 0:
        time.sleep(0.05)  # the start-up self-check's uid
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        long = ex.submit(srv.execute, SLEEP.format(s=4), timeout=8)
        time.sleep(0.3)  # it runs on the ready jail; the pool's refill has taken a uid
        waiting = [ex.submit(srv.execute, f"def main():\n    return {i}\n") for i in (1, 2)]
        answers = [f.result() for f in waiting]
        expect_result(long.result(), "slept")
    assert any(r.status == 200 for r in answers), answers
    for i, resp in enumerate(answers, 1):
        if resp.status == 200:
            expect_result(resp, i)
        else:
            expect_error(resp, 429, "busy")


def test_a_pool_start_that_misses_the_start_timeout_is_counted_slow(server_factory):
    """A ready jail still starting after PYEXEC_START_TIMEOUT is killed and counted as slow,
    not as failed (docs/api.md, pyexec_pool_discarded_total): a one-shot jail importing pandas
    takes far longer than 0.2 s."""
    srv = pool_server(server_factory, PYEXEC_POOL="1", PYEXEC_ZYGOTE="off",
                      PYEXEC_PRELOAD="numpy,pandas", PYEXEC_START_TIMEOUT="0.2")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = metrics(srv)
        if got.get('pyexec_pool_discarded_total{reason="slow"}', 0) >= 2:
            break
        time.sleep(0.2)
    assert got['pyexec_pool_discarded_total{reason="slow"}'] >= 2, got
    assert got['pyexec_pool_discarded_total{reason="failed"}'] == 0, got
