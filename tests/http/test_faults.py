"""Faults the service must survive: a missing or broken sandbox, jails killed from outside,
hostile clients, descriptor exhaustion. Each ends with the service healthy again."""

import json
import os
import resource
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from pyexec_testlib import (Server, check_healthy, expect_error, expect_result,
                            expect_script_error, external_url, nsjail_path,
                            trickled_until_closed)
from test_pool import jail_runner_pids, metrics, open_request

OK = "def main():\n    return 42\n"


class UnhealthyServer(Server):
    """A server expected to start without a working sandbox: it must still answer."""

    def _wait_ready(self, start_timeout):
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"pyexecd exited:\n{self.log_tail()}"
            try:
                self.get("/healthz", timeout=2)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"pyexecd never answered:\n{self.log_tail()}")


@pytest.fixture
def unhealthy(tmp_path):
    if external_url():
        pytest.skip("starts servers of its own; PYEXEC_TEST_URL points at an external one")
    started = []

    def start(**env):
        srv = UnhealthyServer("unhealthy", env, tmp_path)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
        assert srv.proc.returncode == 0, srv.log_tail()


def test_nsjail_missing(unhealthy):
    srv = unhealthy(PYEXEC_NSJAIL="/nonexistent/nsjail")
    health = srv.get("/healthz")
    assert health.status == 503 and "nsjail" in health.json()["message"], health
    body = expect_error(srv.execute(OK), 500, "internal")
    assert "nsjail" in body["message"] and "/nonexistent" not in body["message"], body
    assert srv.alive()


@pytest.fixture
def open_tmp_path():
    """A directory every uid may traverse (pytest's are root's alone): the restricted tier
    execs nsjail as the run's uid."""
    path = Path(tempfile.mkdtemp(prefix="pyexec-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_nsjail_loses_its_exec_bit(server_factory, open_tmp_path):
    tmp_path = open_tmp_path
    copy = tmp_path / "nsjail"
    shutil.copy(nsjail_path(), copy)
    # One-shot jails: a zygote's runs are forks, which need no exec of nsjail (the zygote's
    # restart does; test_zygote.py).
    srv = server_factory(fresh=True, PYEXEC_NSJAIL=str(copy), PYEXEC_POOL="0",
                         PYEXEC_ZYGOTE="off")
    expect_result(srv.execute(OK), 42)
    os.chmod(copy, 0o644)
    try:
        assert srv.get("/healthz").status == 503
        body = expect_error(srv.execute(OK), 500, "internal")
        assert str(tmp_path) not in body["message"], body
        assert srv.alive()
    finally:
        os.chmod(copy, 0o755)
    assert srv.get("/healthz").status == 200
    expect_result(srv.execute(OK), 42)


def test_a_jail_that_fails_on_its_own_is_logged_with_its_own_exit_code(server_factory,
                                                                        open_tmp_path):
    """A jail that failed to start is ended without waiting for a death that may take long;
    one whose nsjail exited on its own was logged as killed (137) when its pipes were seen
    closed a moment before its exit was (1 start in 6)."""
    flag = open_tmp_path / "broken"
    wrapper = open_tmp_path / "nsjail"
    wrapper.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then\n"
                       "  echo 'nsjail: broken on purpose' >&2\n  exit 3\nfi\n"
                       f"exec {nsjail_path()} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    # One-shot jails started for each request: nsjail is the server's child.
    srv = server_factory(fresh=True, PYEXEC_NSJAIL=str(wrapper), PYEXEC_POOL="0",
                         PYEXEC_ZYGOTE="off")
    expect_result(srv.execute(OK), 42)
    flag.touch()
    try:
        for _ in range(30):
            expect_error(srv.execute(OK), 500, "internal")
    finally:
        flag.unlink()
    logged = [json.loads(line) for line in srv.log_path.read_text().splitlines()
              if '"jail did not start"' in line]
    assert len(logged) == 30, logged
    assert {(e["exitCode"], e["nsjail"]) for e in logged} == {(3, "nsjail: broken on purpose\n")}
    expect_result(srv.execute(OK), 42)


def test_jail_that_cannot_start(unhealthy, tmp_path):
    bad = tmp_path / "nsjail.cfg"
    bad.write_text("this is not a protobuf text config {\n")
    srv = unhealthy(PYEXEC_JAIL_CONFIG=str(bad), PYEXEC_RESTRICTED_CONFIG=str(bad),
                    PYEXEC_POOL="1")
    health = srv.get("/healthz")
    assert health.status == 503, health
    body = expect_error(srv.execute(OK), 500, "internal")
    assert "could not start" in body["message"], body
    assert srv.alive()
    # the pool backs off instead of spinning on a broken sandbox
    time.sleep(1.5)
    assert metrics(srv)['pyexec_pool_discarded_total{reason="failed"}'] <= 4


@pytest.mark.real_kernel_only("the jail's processes live in gVisor's kernel, invisible in the "
                              "host's /proc from which this test kills one")
def test_jail_killed_from_outside_mid_run(server):
    sock = None
    try:
        with_marker = "import time\ndef main():\n    print('started', flush=True)\n" \
                      "    time.sleep(30)\n"
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(server.execute, with_marker, 40)
            deadline = time.monotonic() + 10
            victims = []
            while time.monotonic() < deadline:
                time.sleep(0.3)
                # the running jail's runner: the one whose init is not waiting in the pool
                victims = [p for p in jail_runner_pids(server) if _is_running_script(p)]
                if victims:
                    break
            assert victims, "found no running jail"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            resp = fut.result()
        body = expect_script_error(resp, "killed")
        assert "SIGKILL" in body["message"]
    finally:
        if sock:
            sock.close()
    check_healthy(server)


def _is_running_script(pid):
    """A runner process that reads no more stdin: it has its script (sleeping in main)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    except OSError:
        return False
    # Not a ready runner waiting for its script, nor an init relaying (select) or reaping.
    return not any(w in wchan for w in ("pipe_read", "do_wait", "select", "poll"))


def test_slow_client_is_cut_off(server_factory):
    srv = server_factory(fresh=True, PYEXEC_CONNECTION_TIMEOUT="2")
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    sock.settimeout(8)
    start = time.monotonic()
    for _ in range(3):
        expect_result(srv.execute(OK), 42)  # others are served meanwhile
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    assert data == b"" or b"408" in data, data
    assert time.monotonic() - start < 7
    sock.close()
    check_healthy(srv)


def wait_pool_full(srv, size=2, seconds=20.0):
    deadline = time.monotonic() + seconds
    while srv.get("/healthz").json()["poolReady"] < size and time.monotonic() < deadline:
        time.sleep(0.1)


def test_body_that_stops_half_way(server_factory):
    srv = server_factory(fresh=True, PYEXEC_CONNECTION_TIMEOUT="2")
    wait_pool_full(srv)  # the ready jails' descriptors are all open before the count
    fds_before = len(os.listdir(f"/proc/{srv.pid}/fd"))
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"script\": \"def ma")
    sock.settimeout(8)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    assert data == b"" or b"408" in data, data
    sock.close()
    time.sleep(0.5)
    assert len(os.listdir(f"/proc/{srv.pid}/fd")) <= fds_before
    check_healthy(srv)


HOLD_IDLE = """
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, max(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
socks = []
for _ in range(1000):
    try:
        socks.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError:
        pass
print(len(socks), flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_thousand_idle_connections(server_factory):
    """Another process opens 1000 connections and leaves them idle: the server stays up,
    drops them after PYEXEC_CONNECTION_TIMEOUT, and serves again."""
    import subprocess
    import sys
    srv = server_factory(fresh=True, PYEXEC_CONNECTION_TIMEOUT="3")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_IDLE, str(srv.port), "8"],
                              stdout=subprocess.PIPE, text=True)
    try:
        opened = int(holder.stdout.readline())
        assert opened > 256, opened
        time.sleep(0.5)
        assert srv.alive()
        time.sleep(4)  # the server drops idle connections after PYEXEC_CONNECTION_TIMEOUT
        check_healthy(srv)  # while the holder still has its sockets open
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.5)
    assert len(os.listdir(f"/proc/{srv.pid}/fd")) < 64


def test_oversized_headers(server):
    resp = server.request("GET", "/healthz", headers={"X-Big": "a" * 100_000})
    assert resp.status in (413, 431), resp
    check_healthy(server)


def test_descriptor_limit_reached_and_recovered(server_factory):
    """With its descriptor limit nearly used up the server answers (500 or 429), never dies,
    and serves normally once descriptors are free again."""
    import concurrent.futures
    srv = server_factory(fresh=True, PYEXEC_POOL="0", PYEXEC_CONCURRENCY="8",
                         PYEXEC_QUEUE="8")
    hard = resource.prlimit(srv.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (40, hard))
    script = "import time\ndef main():\n    time.sleep(1)\n    return 1\n"
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        futs = [ex.submit(_try_execute, srv, script) for _ in range(12)]
        statuses = [f.result() for f in futs]
    assert srv.alive()
    assert set(statuses) <= {200, 500, 429, 503, None}, statuses
    assert any(s in (500, None) for s in statuses), f"the limit was never reached: {statuses}"
    time.sleep(0.5)
    expect_result(srv.execute(OK), 42)  # recovers under the same low limit
    resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (hard, hard))
    check_healthy(srv)


def _try_execute(srv, script):
    try:
        resp = srv.execute(script, http_timeout=20)
        return resp.status
    except OSError:
        return None  # the server could not even accept the connection


def test_client_gone_before_answer_does_not_kill_server(server):
    """The answer is written to a closed socket (EPIPE): SIGPIPE is ignored."""
    script = "def main():\n    print('x' * 1000000)\n    return 'y' * 500000\n"
    for _ in range(3):
        sock = open_request(server, script)
        sock.close()
    time.sleep(1)
    check_healthy(server)


HOLD_STALLED = """
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, max(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
socks = []
for _ in range(1000):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
        s.sendall(b"POST /execute HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                  b"Content-Length: 100\\r\\n\\r\\n{\\"scr")
        socks.append(s)
    except OSError:
        pass
print(len(socks), flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_thousand_stalled_requests_leave_room(server_factory):
    """One client opens 1000 connections and sends half a request on each (headers, then a
    few bytes of body): a legitimate request is still answered at once, not after the stalled
    ones time out."""
    import subprocess
    import sys
    srv = server_factory(fresh=True, PYEXEC_CONNECTION_TIMEOUT="30")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STALLED, str(srv.port), "40"],
                              stdout=subprocess.PIPE, text=True)
    try:
        opened = int(holder.stdout.readline())
        assert opened == 1000, opened
        start = time.monotonic()
        resp = srv.execute(OK, http_timeout=10)
        print(f"answered in {time.monotonic() - start:.3f} s with 1000 stalled connections")
        expect_result(resp, 42)
        assert srv.alive()
    finally:
        holder.kill()
        holder.wait()


def test_trickled_body_has_a_deadline(server_factory):
    """A body that keeps coming a byte at a time never looks idle; it must still arrive in
    full within PYEXEC_CONNECTION_TIMEOUT of its headers."""
    srv = server_factory(fresh=True, PYEXEC_CONNECTION_TIMEOUT="2")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    assert trickled_until_closed(sock, b" "), "a body trickled for 15 s was still being read"
    check_healthy(srv)
