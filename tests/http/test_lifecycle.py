"""SIGTERM handling and the request log (the Cloud Run contract)."""

import concurrent.futures
import json
import os
import signal
import time

from conftest import SANITIZER_MARKERS
from pyexec_testlib import expect_error, expect_result


def test_sigterm_stops_runs_past_the_grace_period(server_factory):
    """In-flight runs get PYEXEC_GRACE seconds; one that needs longer is stopped and answered
    503, and the server still exits 0 within the grace period plus a few seconds."""
    srv = server_factory(fresh=True, PYEXEC_GRACE="1")
    script = "import time\ndef main():\n    time.sleep(30)\n    return 'late'\n"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(srv.execute, script, 40)
        time.sleep(0.7)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        expect_error(fut.result(), 503, "shutting_down")
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - start < 6


def test_healthz_fails_while_shutting_down(server_factory):
    srv = server_factory(fresh=True, PYEXEC_GRACE="3")
    script = "import time\ndef main():\n    time.sleep(2)\n    return 'done'\n"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(srv.execute, script, 10)
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        resp = srv.get("/healthz")
        assert resp.status == 503 and "shutting down" in resp.json()["message"], resp
        expect_result(fut.result(), "done")
    assert srv.proc.wait(10) == 0


def log_lines(srv):
    out = []
    for line in srv.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # every line the server writes is one JSON object
    return out


def test_request_log_line_is_structured_and_private(server_factory):
    srv = server_factory(fresh=True)
    secret_source = "SOURCE_MARKER_7f3a"
    secret_output = "OUTPUT_MARKER_91bc"
    script = (f"def main():\n    # {secret_source}\n    print('{secret_output[:7]}' + "
              f"'{secret_output[7:]}')\n    return '{secret_output[:5]}' + '{secret_output[5:]}'\n")
    resp = srv.execute(script)
    expect_result(resp, secret_output, stdout=secret_output + "\n")
    rid = resp.header("X-Request-Id")
    time.sleep(0.2)
    entries = [e for e in log_lines(srv) if e.get("requestId") == rid]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["severity"] == "INFO"
    assert isinstance(entry["message"], str) and "/execute" in entry["message"]
    http = entry["httpRequest"]
    assert http["requestMethod"] == "POST" and http["requestUrl"] == "/execute"
    assert http["status"] == 200 and http["latency"].endswith("s")
    assert entry["outcome"] == "ok" and entry["durationMs"] >= 0
    text = srv.log_path.read_text(errors="replace")
    assert secret_source not in text and secret_output not in text
    # an error is logged with its code, at a severity that matches
    bad = srv.execute("def main():\n    1/0\n")
    time.sleep(0.2)
    entry = [e for e in log_lines(srv) if e.get("requestId") == bad.header("X-Request-Id")][0]
    assert entry["outcome"] == "exception" and entry["httpRequest"]["status"] == 422


def test_client_request_id_is_echoed_and_logged(server_factory):
    srv = server_factory(fresh=True)
    resp = srv.request("POST", "/execute", body=b'{"script": "def main():\\n    return 1\\n"}',
                       headers={"Content-Type": "application/json",
                                "X-Request-Id": "trace-abc.123"})
    expect_result(resp, 1)
    assert resp.header("X-Request-Id") == "trace-abc.123"
    time.sleep(0.2)
    assert any(e.get("requestId") == "trace-abc.123" for e in log_lines(srv))
    # a malformed one is replaced, not echoed
    resp = srv.request("GET", "/healthz", headers={"X-Request-Id": "bad id\u00e9"})
    assert resp.header("X-Request-Id") != "bad id\u00e9"


def server_children(pid):
    kids = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.update(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def test_sigterm_with_runs_ready_jails_and_reaping_in_flight_exits_clean(server_factory):
    """SIGTERM while runs go on, pool jails wait ready and finished jails are still being
    reaped: every process the server started is ended and its resources released before what
    they use is freed, so the server (the ASan build in the sanitizer pass) exits 0 without a
    sanitizer report and leaves none of its jails behind."""
    srv = server_factory(fresh=True, PYEXEC_GRACE="1", PYEXEC_POOL="2", PYEXEC_CONCURRENCY="6")
    deadline = time.monotonic() + 20
    while srv.get("/healthz").json()["poolReady"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.get("/healthz").json()["poolReady"] == 2
    slow = "import time\ndef main():\n    time.sleep(30)\n"
    quick = "def main():\n    return 1\n"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        slow_runs = [pool.submit(srv.execute, slow, 40) for _ in range(2)]
        time.sleep(0.5)
        quick_runs = [pool.submit(srv.execute, quick) for _ in range(4)]
        for fut in quick_runs:
            expect_result(fut.result(), 1)
        # The quick runs' jails are handed over for reaping as their answers go out.
        started = server_children(srv.pid)
        srv.proc.send_signal(signal.SIGTERM)
        for fut in slow_runs:
            expect_error(fut.result(), 503, "shutting_down")
    assert srv.proc.wait(15) == 0
    text = srv.log_path.read_text(errors="replace")
    for marker in SANITIZER_MARKERS:
        assert marker not in text, text[text.index(marker):][:2000]
    assert "still held by their owners" not in text
    assert started, "the server had no jail running"
    left = [pid for pid in started if os.path.exists(f"/proc/{pid}")]
    assert not left, left


def test_a_client_stalled_mid_body_does_not_hold_up_the_shutdown(server_factory):
    """A request whose body has not all arrived has no answer to wait for: SIGTERM stops the
    server at once, not after the grace period (the hang seen when a slow-body test left its
    connection open)."""
    import socket

    srv = server_factory(fresh=True, PYEXEC_GRACE="30")
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"script\": ")
        time.sleep(0.3)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(25) == 0
        assert time.monotonic() - start < 10
