"""Helpers for the black-box HTTP tests of pyexecd.

Only the standard library is used.  Every request opens a fresh connection to
127.0.0.1 with ``Connection: close`` and speaks HTTP/1.1 over a raw socket, so a
test can send anything (invalid UTF-8, no Content-Type, chunked bodies, a body
the server refuses before reading it all).

By default the suite starts build/pyexecd itself (``Server``).  With
``PYEXEC_TEST_URL=http://127.0.0.1:PORT`` it tests a server started elsewhere, such as
the Docker image (``ExternalServer``; see tests/image/run.sh).
"""

import http.client
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Environment put on every server we start: the jail must never see any of it.
CANARY_ENV = {
    "PYEXEC_TEST_SECRET": "hunter2",
    "PYEXEC_TEST_CANARY_PLAIN": "hunter2-plain",
}
CANARY_VALUE = "hunter2"

# Script code: count_marked(mark) counts the processes the script can see whose command line
# holds mark (a run's own leftovers, or an earlier run's).
COUNT_MARKED = """
def count_marked(mark):
    n = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                n += mark.encode() in f.read()
        except OSError:
            pass
    return n
"""

TRIVIAL_SCRIPT = "def main():\n    return 41 + 1\n"


def binary_path():
    """The server binary: $PYEXEC_TEST_BINARY (relative to the repo root) or build/pyexecd."""
    raw = os.environ.get("PYEXEC_TEST_BINARY") or "build/pyexecd"
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def nsjail_path():
    """The nsjail the server would use: scripts/build-nsjail's build, else the one on PATH."""
    local = REPO_ROOT / ".local" / "bin" / "nsjail"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("nsjail")


def trickled_until_closed(sock, chunk, seconds=15.0):
    """Sends chunk every half second for `seconds`; True when the server closed the connection
    meanwhile. Closes sock."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            sock.sendall(chunk)
            time.sleep(0.5)
    except (BrokenPipeError, ConnectionResetError):
        return True
    finally:
        sock.close()
    return False


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()
        self.body = body
        self.elapsed = elapsed
        self._json = None

    def header(self, name):
        return self.headers.get(name) if self.headers is not None else None

    def json(self):
        if self._json is None:
            self._json = json.loads(self.body.decode("utf-8"))
        return self._json

    def __repr__(self):
        hdrs = ""
        if self.headers is not None:
            hdrs = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
        body = self.body[:1500]
        more = f" ... ({len(self.body)} bytes)" if len(self.body) > 1500 else ""
        return (f"<HTTP {self.status} in {self.elapsed:.2f}s [{hdrs}] "
                f"body={body!r}{more}>")


def _send_body(sock, body):
    """Send body in chunks; stop early if the server already answered or hung up."""
    view = memoryview(body)
    off = 0
    while off < len(view):
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            return
        try:
            off += sock.send(view[off:off + 65536])
        except (BrokenPipeError, ConnectionResetError):
            return


def raw_request(port, method, path, body=b"", headers=None, timeout=60.0,
                content_length=True, chunks=None):
    """Send one request and read the whole answer.

    headers: dict of extra headers (a value of None is not sent).
    chunks: a list of byte strings sent with Transfer-Encoding: chunked instead of body.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    else:
        payload = body
        if content_length and (body or method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {len(body)}")
    for key, value in (headers or {}).items():
        if value is not None:
            lines.append(f"{key}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(head)
        _send_body(sock, payload)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        data = resp.read()
        return Response(resp.status, resp.headers, data, time.monotonic() - start)
    finally:
        sock.close()


def local_tier():
    """The isolation tier local servers are started with: $PYEXEC_TEST_ISOLATION (full or
    restricted), default full."""
    tier = os.environ.get("PYEXEC_TEST_ISOLATION") or "full"
    if tier not in ("full", "restricted"):
        raise ValueError(f"PYEXEC_TEST_ISOLATION must be full or restricted, not {tier!r}")
    return tier


_run_uid_blocks = itertools.count()


def next_run_uid():
    """A block of 1024 run uids no other server of this session uses (two servers sharing a
    block would kill each other's restricted runs; pyexecd refuses to start then). The blocks
    start at $PYEXEC_TEST_RUN_UID_BASE, by default at one of 1000 bases 2048000 apart chosen
    by this session's pid, so that suites run at once on one machine rarely meet."""
    base = int(os.environ.get("PYEXEC_TEST_RUN_UID_BASE") or
               300000 + 2048000 * (os.getpid() % 1000))
    return base + 1024 * (next(_run_uid_blocks) % 2000)


class Server:
    """A running pyexecd started by the test-suite."""

    def __init__(self, name, extra_env, log_dir, start_timeout=None, prefix=()):
        """prefix: a command that runs pyexecd (it gets pyexecd's command line)."""
        self.name = name
        self.prefix = tuple(prefix)
        self.extra_env = dict(extra_env)
        self.port = free_port()
        self.log_path = Path(log_dir) / f"pyexecd-{name}-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYEXEC_")}
        env.update(CANARY_ENV)
        env["PYEXEC_ISOLATION"] = local_tier()
        env["PYEXEC_RUN_UID"] = str(next_run_uid())
        env.update(self.extra_env)
        self.env = env
        self.binary = binary_path()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*prefix, str(self.binary), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if start_timeout is None:
            start_timeout = float(os.environ.get("PYEXEC_TEST_START_TIMEOUT", "10"))
        self._wait_ready(start_timeout)

    @property
    def pid(self):
        return self.proc.pid

    def _wait_ready(self, start_timeout):
        deadline = time.monotonic() + start_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pyexecd ({self.name}) exited with status {self.proc.returncode} "
                    f"during start-up; log tail:\n{self.log_tail()}")
            try:
                resp = raw_request(self.port, "GET", "/healthz", timeout=2)
                last = resp
                if resp.status == 200:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"pyexecd ({self.name}) did not answer GET /healthz with 200 within "
            f"{start_timeout:.0f}s (last: {last!r}); log tail:\n{self.log_tail()}")

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, lines=20):
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace=10.0):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # Anything left in the session we created for the server (its own children).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    # --- requests -----------------------------------------------------------

    def request(self, method, path, body=b"", headers=None, **kw):
        return raw_request(self.port, method, path, body=body, headers=headers, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post_json(self, path, obj, content_type="application/json", **kw):
        body = obj if isinstance(obj, bytes) else json.dumps(obj)
        return self.request("POST", path, body=body,
                            headers={"Content-Type": content_type}, **kw)

    def execute(self, script, timeout=None, http_timeout=90.0, **fields):
        payload = {"script": script}
        if timeout is not None:
            payload["timeout"] = timeout
        payload.update(fields)
        return self.post_json("/execute", payload, timeout=http_timeout)


class _ExternalProc:
    """Stands in for Server.proc: failure messages read .returncode, reports call poll()."""

    returncode = None

    def __init__(self, server):
        self._server = server

    def poll(self):
        return None if self._server.alive() else -1


def external_url():
    """$PYEXEC_TEST_URL, or None: then the suite starts its own servers."""
    return os.environ.get("PYEXEC_TEST_URL") or None


def _pid_listening_on(port):
    """The pid of the process with a TCP socket listening on port in this network namespace
    (a container started with --network host shares it), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            pass
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return int(pid)
        except OSError:
            continue
    return None


class ExternalServer:
    """A pyexecd started outside the suite (the Docker image in tests/image/run.sh) and
    reached at $PYEXEC_TEST_URL, which must be http://127.0.0.1:PORT (or localhost): every
    request goes to 127.0.0.1.  It offers what the tests read of a Server:

    - pid: $PYEXEC_TEST_SERVER_PID, else the process listening on PORT (seen from this host:
      a container's processes are visible in the host's /proc);
    - env: that process's environment, read from /proc (else only CANARY_ENV and PORT), so
      the canary tests are meaningful only if the server was started with CANARY_ENV;
    - binary: the path that process runs (inside its container);
    - log_path: $PYEXEC_TEST_SERVER_LOG, a file the caller keeps filled with the server's
      stderr (e.g. `docker logs -f`), shown in failure reports.

    The suite neither starts nor stops it.
    """

    name = "external"

    def __init__(self, url):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost") \
                or not parsed.port or parsed.path not in ("", "/"):
            raise ValueError(f"PYEXEC_TEST_URL must be http://127.0.0.1:PORT, not {url!r} "
                             f"(the helpers speak to 127.0.0.1 only)")
        self.url = url
        self.port = parsed.port
        self.extra_env = {}
        self.proc = _ExternalProc(self)
        raw_pid = os.environ.get("PYEXEC_TEST_SERVER_PID")
        self.pid = int(raw_pid) if raw_pid else _pid_listening_on(self.port)
        self.env = self._read_env()
        self.binary = self._read_binary()
        self.log_path = Path(os.environ.get("PYEXEC_TEST_SERVER_LOG")
                             or "/nonexistent/pyexecd-external.log")

    def _read_env(self):
        if self.pid:
            try:
                with open(f"/proc/{self.pid}/environ", "rb") as f:
                    pairs = f.read().decode("utf-8", "replace").split("\0")
                return dict(p.split("=", 1) for p in pairs if "=" in p)
            except OSError:
                pass
        env = dict(CANARY_ENV)
        env["PORT"] = str(self.port)
        return env

    def _read_binary(self):
        if self.pid:
            try:
                return Path(os.readlink(f"/proc/{self.pid}/exe"))
            except OSError:
                pass
        return Path("/usr/local/bin/pyexecd")

    def wait_ready(self, timeout):
        """Wait for GET /healthz to answer 200; raises RuntimeError after timeout seconds."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = raw_request(self.port, "GET", "/healthz", timeout=2)
                if last.status == 200:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"the server at {self.url} did not answer GET /healthz with 200 "
                           f"within {timeout:.0f}s (last: {last!r}); log tail:\n"
                           f"{self.log_tail()}")

    def alive(self):
        if self.pid:
            return os.path.exists(f"/proc/{self.pid}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            return True
        except OSError:
            return False

    def log_tail(self, lines=20):
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc}; set PYEXEC_TEST_SERVER_LOG to the server's log file)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace=10.0):
        """Not ours to stop: whoever started it stops it."""

    request = Server.request
    get = Server.get
    post_json = Server.post_json
    execute = Server.execute


# --- assertions -------------------------------------------------------------

def assert_json_content_type(resp):
    ctype = resp.header("Content-Type") or ""
    assert ctype.split(";")[0].strip().lower() == "application/json", \
        f"Content-Type is {ctype!r}: {resp!r}"


def assert_run_headers(resp):
    rid = resp.header("X-Request-Id")
    assert rid and rid.strip(), f"missing X-Request-Id: {resp!r}"
    ms = resp.header("X-Execution-Time-Ms")
    assert ms is not None and ms.strip().isdigit(), f"bad X-Execution-Time-Ms {ms!r}: {resp!r}"


def expect_ok(resp):
    """200 with a body of exactly {"result", "stdout"}; returns the body."""
    assert resp.status == 200, f"expected 200, got {resp!r}"
    assert_json_content_type(resp)
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"result", "stdout"}, \
        f"200 body must have exactly result and stdout: {resp!r}"
    assert isinstance(body["stdout"], str)
    assert_run_headers(resp)
    return body


def expect_result(resp, expected, stdout=""):
    body = expect_ok(resp)
    assert body["result"] == expected, f"result {body['result']!r} != {expected!r}: {resp!r}"
    assert type(body["result"]) is type(expected), f"result type differs: {resp!r}"
    if stdout is not None:
        assert body["stdout"] == stdout, f"stdout {body['stdout']!r} != {stdout!r}: {resp!r}"
    return body


def expect_error(resp, status, code):
    """An error answer: status, {"error": code, "message": non-empty}; returns the body."""
    assert resp.status == status and resp.body, \
        f"expected {status} {code}, got {resp!r}"
    assert_json_content_type(resp)
    body = resp.json()
    assert isinstance(body, dict), f"error body is not an object: {resp!r}"
    assert body.get("error") == code, f"expected error {code!r}: {resp!r}"
    msg = body.get("message")
    assert isinstance(msg, str) and msg.strip(), f"message missing or empty: {resp!r}"
    return body


def expect_script_error(resp, code):
    """A 422 script-level error: also carries "stdout" and the run headers."""
    body = expect_error(resp, 422, code)
    assert isinstance(body.get("stdout"), str), f"422 without a stdout string: {resp!r}"
    assert_run_headers(resp)
    return body


def assert_traceback_clean(tb, resp=None):
    assert isinstance(tb, str) and tb.strip(), f"traceback missing: {resp!r}"
    for bad in ("runner", "/pyexec", "/work", "pyexecd"):
        assert bad not in tb, f"traceback leaks {bad!r}: {tb!r}"


def check_healthy(server):
    """The service still answers /healthz and still runs a trivial script correctly."""
    assert server.alive(), f"pyexecd died (status {server.proc.returncode}):\n{server.log_tail()}"
    resp = server.get("/healthz", timeout=15)
    assert resp.status == 200, f"/healthz after the attack: {resp!r}"
    resp = server.execute(TRIVIAL_SCRIPT, http_timeout=30)
    expect_result(resp, 42, stdout="")
    assert server.alive()


def busy_script(seconds, procs):
    """A script whose `procs` processes (itself and its children) keep a CPU busy for
    `seconds`; main() returns "busy"."""
    return ("import os, time\ndef main():\n"
            f"    end = time.monotonic() + {seconds}\n"
            f"    for _ in range({procs - 1}):\n"
            "        if os.fork() == 0:\n"
            "            while time.monotonic() < end:\n"
            "                pass\n"
            "            os._exit(0)\n"
            "    while time.monotonic() < end:\n"
            "        pass\n"
            "    return 'busy'\n")
