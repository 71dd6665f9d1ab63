"""The playground at /: what the server sends a browser (headers, and a page that loads nothing
from elsewhere and no inline code), and the setting that turns it off. `make browser-test`
drives it in a real browser."""

import re
import subprocess
from html.parser import HTMLParser

import pytest

from pyexec_testlib import REPO_ROOT, binary_path, external_url

FILES = {"/": "text/html", "/playground.js": "text/javascript",
         "/playground.css": "text/css"}


def csp(resp):
    """The Content-Security-Policy as {directive: [sources]}."""
    value = resp.header("Content-Security-Policy")
    assert value, f"no Content-Security-Policy: {resp!r}"
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


@pytest.mark.parametrize("path", list(FILES))
def test_files_served_with_type_and_nosniff(server, path):
    resp = server.get(path)
    assert resp.status == 200 and resp.body, resp
    assert resp.header("Content-Type").split(";")[0] == FILES[path], resp
    assert resp.header("X-Content-Type-Options") == "nosniff", resp
    assert resp.body == (REPO_ROOT / "web" / ("playground.html" if path == "/" else path[1:])
                         ).read_bytes(), f"{path} is not the file in web/"


def test_openapi_json_nosniff(server):
    assert server.get("/openapi.json").header("X-Content-Type-Options") == "nosniff"


def test_csp_is_strict(server):
    policy = csp(server.get("/"))
    assert policy["default-src"] == ["'none'"], policy
    for directive in ("script-src", "style-src", "connect-src"):
        assert policy[directive] == ["'self'"], policy
    assert policy["frame-ancestors"] == ["'none'"], policy
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"], policy
    flat = " ".join(w for v in policy.values() for w in v)
    for loose in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"):
        assert loose not in flat.split(), policy


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.inline, self.ids = [], [], set()
        self._tag = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for name, value in attrs.items():
            if name in ("src", "href", "action"):
                self.refs.append(value)
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style" or (tag == "script" and "src" not in attrs):
            self.inline.append(f"<{tag}>")

    def handle_data(self, data):
        if self._tag == "script" and data.strip():
            self.inline.append("<script> with a body")


def test_page_loads_only_its_own_files_and_no_inline_code(server):
    page = _Page()
    page.feed(server.get("/").body.decode("utf-8"))
    # Same-origin paths only; the CSP would refuse the rest, and inline code too.
    assert page.refs and all(re.fullmatch(r"/[A-Za-z0-9._/-]*", r) and not r.startswith("//")
                             for r in page.refs), page.refs
    assert not page.inline, page.inline
    for ref in page.refs:
        assert server.get(ref).status == 200, ref
    # What the script fills in, shown apart.
    assert {"script", "timeout", "run", "result", "stdout", "error-code", "error-message",
            "traceback", "time"} <= page.ids, page.ids


def test_script_fetches_execute_on_its_own_origin(server):
    js = server.get("/playground.js").body.decode("utf-8")
    urls = re.findall(r"fetch\(\s*([^,)]+)", js)
    assert urls == ['"/execute"'], urls
    assert "X-Execution-Time-Ms" in js


@pytest.mark.parametrize("env", [{"PYEXEC_PLAYGROUND": "off"}, {"PYEXEC_PLAYGROUND": "0"}])
def test_playground_off(server_factory, env):
    srv = server_factory(**env)
    for path in FILES:
        resp = srv.get(path)
        assert resp.status == 404 and resp.json()["error"] == "not_found", resp
    assert srv.get("/openapi.json").status == 200


def test_bad_playground_setting_refused():
    if external_url():
        pytest.skip("runs the binary")
    proc = subprocess.run([str(binary_path()), "--playground", "maybe"], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 2 and "on or off" in proc.stderr, proc
