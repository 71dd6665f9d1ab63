"""The playground in a real browser: Debian's headless Chromium, driven over the DevTools
protocol, types scripts into the page, clicks Run, and the test reads what the page shows.
It also fails on any error the browser logs (a CSP refusal of the page's own files would be
one). A screenshot of a run is saved to $PYEXEC_SCREENSHOT (default build/playground.png).

Run with `make browser-test` (needs chromium and python3-websocket:
scripts/install-deps --browser)."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from pyexec_testlib import REPO_ROOT, Server  # noqa: E402

websocket = pytest.importorskip("websocket", reason="python3-websocket is not installed")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-proxy-server",
                  "--hide-scrollbars", "--remote-debugging-port=0", "--window-size=1100,1000"]
WIDTH = 1100


class Browser:
    """One headless Chromium and a DevTools connection to its page."""

    def __init__(self, profile):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            pytest.fail("chromium is not installed (scripts/install-deps --browser)")
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "about:blank"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        port = self._devtools_port(Path(profile) / "DevToolsActivePort")
        # Straight to 127.0.0.1, whatever proxy the environment names.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.load(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self.seq = 0
        self.events = []

    def _devtools_port(self, path):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chromium exited with status {self.proc.returncode}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        pytest.fail("chromium did not open its DevTools port within 30 s")

    def call(self, method, **params):
        self.seq += 1
        self.ws.send(json.dumps({"id": self.seq, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.seq:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == name:
                    return self.events.pop(i)
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        raise AssertionError(f"no {name} within {timeout} s")

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        assert "exceptionDetails" not in r, f"{expression}: {r['exceptionDetails']}"
        return r["result"].get("value")

    def click(self, selector):
        """A real mouse click (press and release) at the middle of the element."""
        box = self.eval(f"JSON.stringify(document.querySelector({selector!r})"
                        f".getBoundingClientRect())")
        box = json.loads(box)
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def type_into(self, selector, text):
        """Replaces the field's text as typing would (input events, no value assignment)."""
        self.click(selector)
        self.eval(f"document.querySelector({selector!r}).select()")
        self.call("Input.insertText", text=text)

    def errors(self):
        """What the browser logged as an error: CSP refusals, script exceptions, failed loads
        (aside from the favicon, which the page has none of, and the /execute answers with an
        error status, which the page shows)."""
        self.call("Runtime.evaluate", expression="0")  # flushes events already sent
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error" \
                    and not p["entry"].get("url", "").endswith(("/favicon.ico", "/execute")):
                out.append(p["entry"])
            elif ev.get("method") == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"])
            elif ev.get("method") == "Runtime.consoleAPICalled" and p["type"] == "error":
                out.append(p["args"])
        return out

    def close(self):
        try:
            self.ws.close()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("browser", {}, tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.log_tail()


@pytest.fixture
def page(server, tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log"):
            b.call(f"{domain}.enable")
        b.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=1000,
               deviceScaleFactor=1, mobile=False)
        b.open = lambda: open_page(b, server)
        b.open()
        yield b
    finally:
        b.close()


def open_page(b, server):
    b.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/")
    b.wait_event("Page.loadEventFired")


def shown(b):
    """What the page shows, part by part."""
    return b.eval("""JSON.stringify({
        runs: Number(document.getElementById('status').dataset.runs || 0),
        state: document.getElementById('status').dataset.state,
        http: document.getElementById('http').textContent,
        time: document.getElementById('time').textContent,
        result: document.getElementById('result').textContent,
        stdout: document.getElementById('stdout').textContent,
        errorShown: !document.getElementById('error-box').hidden,
        code: document.getElementById('error-code').textContent,
        message: document.getElementById('error-message').textContent,
        traceback: document.getElementById('traceback').textContent})""")


def run(b, script=None, timeout=None):
    """Types script and timeout (when given), clicks Run and waits for the answer."""
    if script is not None:
        b.type_into("#script", script)
    if timeout is not None:
        b.type_into("#timeout", timeout)
    before = json.loads(shown(b))["runs"]
    b.click("#run")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = json.loads(shown(b))
        if now["runs"] > before and now["state"] == "done":
            return now
        time.sleep(0.1)
    raise AssertionError(f"the page showed no answer within 60 s: {now}")


def screenshot(b, path):
    height = b.eval("Math.ceil(document.body.getBoundingClientRect().bottom) + 16")
    shot = b.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                  clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def test_page_uses_its_own_style_and_script(page):
    # The style sheet applied (a CSP refusal would leave the button grey)...
    assert page.eval("getComputedStyle(document.getElementById('run')).backgroundColor") == \
        "rgb(31, 111, 235)"
    # ...and nothing was refused or failed.
    assert page.errors() == []


def test_run_shows_result_stdout_and_time_apart(page):
    shown_now = run(page, 'def main():\n    print("hello from the playground")\n'
                          '    return {"answer": 42, "items": [1, 2, 3]}\n', timeout="5")
    assert shown_now["http"] == "200 OK", shown_now
    assert json.loads(shown_now["result"]) == {"answer": 42, "items": [1, 2, 3]}, shown_now
    assert shown_now["stdout"] == "hello from the playground\n", shown_now
    assert re.fullmatch(r"[0-9]+ ms", shown_now["time"]), shown_now
    assert not shown_now["errorShown"] and shown_now["code"] == "", shown_now
    assert page.errors() == []


def test_errors_show_code_message_traceback_and_stdout(page):
    shown_now = run(page, 'def main():\n    print("about to fail")\n'
                          '    raise ValueError("bad input")\n')
    assert shown_now["http"].startswith("422"), shown_now
    assert shown_now["errorShown"] and shown_now["code"] == "exception", shown_now
    assert shown_now["message"], shown_now
    assert 'File "<script>", line 3' in shown_now["traceback"], shown_now
    assert "ValueError: bad input" in shown_now["traceback"], shown_now
    assert shown_now["stdout"] == "about to fail\n" and shown_now["result"] == "", shown_now
    screenshot(page, REPO_ROOT / "build" / "playground-error.png")
    # The timeout field is sent: a 1 s limit stops a 5 s sleep.
    shown_now = run(page, "import time\ndef main():\n    time.sleep(5)\n", timeout="1")
    assert shown_now["code"] == "timeout" and "1 s" in shown_now["message"], shown_now
    assert shown_now["traceback"] == "", shown_now
    assert page.errors() == []


def test_default_example_runs_and_screenshot(page):
    """The page's own example (pandas) as a newcomer would run it: open, click Run."""
    shown_now = run(page)
    assert json.loads(shown_now["result"]) == {"Lima": 5, "Oslo": 7}, shown_now
    assert "city" in shown_now["stdout"] and "sales" in shown_now["stdout"], shown_now
    out = Path(os.environ.get("PYEXEC_SCREENSHOT") or REPO_ROOT / "build" / "playground.png")
    if not out.is_absolute():
        out = REPO_ROOT / out
    path = screenshot(page, out)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")
    assert page.errors() == []
