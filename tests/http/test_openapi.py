"""docs/openapi.json against the running server: every status and error code of the contract
that a test can provoke is answered as the document says (body schema, content type and
headers), every path and method the server answers is in the document and nothing else is,
and GET /openapi.json serves the file itself. So the document cannot drift from the server.

Validation uses Debian's python3-jsonschema (JSON Schema 2020-12, OpenAPI 3.1's dialect)."""

import concurrent.futures
import json
import re
import signal
import time

import jsonschema
import pytest

from pyexec_testlib import REPO_ROOT, external_url
from test_faults import UnhealthyServer

DOC_FILE = REPO_ROOT / "docs" / "openapi.json"
DOC = json.loads(DOC_FILE.read_text())
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
# Headers of the contract: each one an answer carries must be documented for that answer.
CONTRACT_HEADERS = re.compile(r"^(x-.*|retry-after|allow|content-security-policy)$", re.I)
SLEEP = "import time\ndef main():\n    time.sleep({s})\n    return 'slept'\n"


def resolve(node, doc=DOC):
    """node with every local $ref replaced by what it points to (the document has no cycles);
    done here so any jsonschema version validates it without a ref resolver."""
    if isinstance(node, list):
        return [resolve(n, doc) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return resolve(target, doc)
    return {k: resolve(v, doc) for k, v in node.items()}


def validate(instance, schema, what):
    try:
        jsonschema.Draft202012Validator(schema).validate(instance)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"{what}: {exc.message} at {list(exc.absolute_path)}") from None


def header_value(value, schema):
    """A header's text as the type its schema names (headers are text on the wire)."""
    if schema.get("type") == "integer" and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return value


def check_response(resp, spec, method, what):
    """resp against one documented response object (its $refs resolved)."""
    headers = spec.get("headers", {})
    for name, h in headers.items():
        value = resp.header(name)
        if h.get("required"):
            assert value is not None, f"{what}: header {name} is required: {resp!r}"
        if value is not None:
            validate(header_value(value, h["schema"]), h["schema"], f"{what}: header {name}")
    documented = {n.lower() for n in headers}
    for name in resp.headers.keys():
        if CONTRACT_HEADERS.match(name) and name.lower() not in documented:
            # CSP is documented where it is promised (the page); the page's files carry it too.
            if name.lower() == "content-security-policy":
                continue
            raise AssertionError(f"{what}: header {name} is not documented: {resp!r}")
    content = spec.get("content")
    if method == "HEAD" or not content:
        assert method == "HEAD" and not resp.body, f"{what}: undocumented body: {resp!r}"
        return
    ctype = (resp.header("Content-Type") or "").split(";")[0].strip().lower()
    assert ctype in content, f"{what}: Content-Type {ctype!r} is not one of {list(content)}"
    body = resp.json() if ctype == "application/json" else resp.body.decode("utf-8")
    validate(body, content[ctype]["schema"], f"{what}: body")


def check(resp, method, path):
    """resp, the answer to method path, against the document; returns its JSON body (or None)."""
    what = f"{method} {path} -> {resp.status}"
    op = DOC["paths"][path].get(method.lower())
    assert op, f"{method} {path} is not in the document"
    spec = op["responses"].get(str(resp.status))
    assert spec, f"{what}: status not documented: {resp!r}"
    check_response(resp, resolve(spec), method, what)
    ctype = resp.header("Content-Type") or ""
    return resp.json() if method != "HEAD" and ctype.startswith("application/json") else None


def check_component(resp, name, method="GET"):
    check_response(resp, resolve(DOC["components"]["responses"][name]), method,
                   f"{method} -> {resp.status} ({name})")
    return resp.json() if method != "HEAD" else None


def execute(srv, script, timeout=None, **kw):
    resp = srv.execute(script, timeout=timeout, **kw)
    return resp, check(resp, "POST", "/execute")


# --- the document itself --------------------------------------------------------------------

def test_document_is_openapi_31_with_valid_schemas():
    assert DOC["openapi"].startswith("3.1."), DOC["openapi"]
    for name, schema in DOC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(resolve(schema))
    # every $ref points somewhere
    resolve(DOC)


def test_served_document_is_the_file(server):
    resp = server.get("/openapi.json")
    check(resp, "GET", "/openapi.json")
    assert resp.body == DOC_FILE.read_bytes(), "GET /openapi.json differs from docs/openapi.json"
    check(server.request("HEAD", "/openapi.json"), "HEAD", "/openapi.json")


# --- every status and error code of the contract --------------------------------------------

# (status, error code) of each case below; test_every_documented_code_is_provoked holds the
# document to this list, so a code added to either side without the other fails.
PROVOKED = {
    (200, None), (400, "invalid_json"), (400, "invalid_request"), (404, "not_found"),
    (405, "method_not_allowed"), (413, "payload_too_large"), (415, "unsupported_media_type"),
    (422, "syntax_error"), (422, "no_main"), (422, "main_not_callable"), (422, "exception"),
    (422, "result_not_json"), (422, "result_too_large"), (422, "output_too_large"),
    (422, "invalid_output"), (422, "timeout"),
    (422, "memory_limit"), (422, "killed"), (429, "busy"), (500, "internal"),
    (503, "shutting_down"),
}


def documented_codes():
    """(status, code) for every error code the document names, plus (200, None)."""
    codes = {(200, None)}
    for path, item in DOC["paths"].items():
        for op in item.values():
            for status, spec in op["responses"].items():
                schema = resolve(spec).get("content", {}).get("application/json", {})
                for code in error_codes(schema.get("schema", {})):
                    codes.add((int(status), code))
    for name, status in (("NotFound", 404), ("MethodNotAllowed", 405)):
        spec = resolve(DOC["components"]["responses"][name])
        codes.update((status, c) for c in error_codes(spec["content"]["application/json"]["schema"]))
    return codes


def error_codes(schema):
    found = []
    for part in [schema, *schema.get("allOf", [])]:
        error = part.get("properties", {}).get("error", {})
        found += error.get("enum", []) + ([error["const"]] if "const" in error else [])
    return found


def test_every_documented_code_is_provoked():
    assert documented_codes() == PROVOKED


def test_200_and_truncated_stdout(server, small_server):
    resp, body = execute(server, "def main():\n    print('hi')\n    return {'a': [1, 2.5]}\n")
    assert resp.status == 200 and body == {"result": {"a": [1, 2.5]}, "stdout": "hi\n"}, resp
    resp, body = execute(small_server, "def main():\n    print('x' * 500)\n    return 1\n")
    assert resp.status == 200 and resp.header("X-Stdout-Truncated") == "true", resp


def test_files_in_and_out(server, small_server):
    """A request with files and stdin, an answer with files, and the two output errors."""
    script = ("import os, sys\n"
              "def main():\n"
              "    os.makedirs('output/sub')\n"
              "    open('output/sub/out.csv', 'w').write(open('in.csv').read() + sys.stdin.read())\n"
              "    return 1\n")
    request = {"script": script, "stdin": "b,2\n",
               "files": [{"path": "in.csv", "content": "YSwxCg=="}]}
    validate(request, resolve(DOC["components"]["schemas"]["ExecuteRequest"]), "request")
    resp = server.post_json("/execute", request)
    body = check(resp, "POST", "/execute")
    assert resp.status == 200 and body["files"] == [
        {"path": "sub/out.csv", "content": "YSwxCmIsMgo="}], resp
    bad_name = ("import os\ndef main():\n    os.mkdir('output')\n"
                "    open(b'output/\\xff', 'w').write('x')\n    return 1\n")
    resp, body = execute(server, bad_name)
    assert resp.status == 422 and body["error"] == "invalid_output", resp
    too_many = ("import os\ndef main():\n    os.mkdir('output')\n"
                "    for i in range(100):\n        open(f'output/{i}', 'w').write('x')\n"
                "    return 1\n")
    resp, body = execute(small_server, too_many)
    assert resp.status == 422 and body["error"] == "output_too_large", resp


def test_request_id_echoed(server):
    resp = server.request("POST", "/execute", body=json.dumps({"script": "def main(): return 1"}),
                          headers={"Content-Type": "application/json", "X-Request-Id": "abc-1.2_3"})
    check(resp, "POST", "/execute")
    assert resp.header("X-Request-Id") == "abc-1.2_3", resp


@pytest.mark.parametrize("body,code", [
    (b'{"script": ', "invalid_json"),
    (b'\xff\xfe', "invalid_json"),
    (b'{"script": "x", "script": "y"}', "invalid_json"),
    (b'[]', "invalid_request"),
    (b'{"scirpt": "def main(): pass"}', "invalid_request"),
    (b'{"script": ""}', "invalid_request"),
    (b'{"script": "x", "timeout": 0}', "invalid_request"),
])
def test_400(server, body, code):
    resp = server.post_json("/execute", body)
    assert resp.status == 400 and check(resp, "POST", "/execute")["error"] == code, resp


def test_413_and_415(server, small_server):
    resp = small_server.post_json("/execute", {"script": "#" * 2000})
    assert check(resp, "POST", "/execute")["error"] == "payload_too_large", resp
    resp = server.post_json("/execute", {"script": "x"}, content_type="text/plain")
    assert check(resp, "POST", "/execute")["error"] == "unsupported_media_type", resp


@pytest.mark.parametrize("script,code,timeout", [
    ("def main(:\n    pass\n", "syntax_error", None),
    ("x = 1\n", "no_main", None),
    ("main = 3\n", "main_not_callable", None),
    ("def main():\n    print('before')\n    raise ValueError('no')\n", "exception", None),
    ("import sys\ndef main():\n    sys.exit(3)\n", "exception", None),
    ("def main():\n    return {1, 2}\n", "result_not_json", None),
    ("import time\ndef main():\n    print('tick', flush=True)\n    time.sleep(5)\n",
     "timeout", 1),
    ("import os\ndef main():\n    os.kill(os.getpid(), 9)\n", "killed", None),
], ids=["syntax_error", "no_main", "main_not_callable", "exception", "exception-exit",
        "result_not_json", "timeout", "killed"])
def test_422(server, script, code, timeout):
    resp, body = execute(server, script, timeout=timeout, http_timeout=30)
    assert resp.status == 422 and body["error"] == code, resp


def test_422_needing_small_limits(small_server):
    resp, body = execute(small_server, "def main():\n    return 'x' * 200\n")
    assert resp.status == 422 and body["error"] == "result_too_large", resp
    resp, body = execute(small_server, "def main():\n    return len(bytearray(8 << 30))\n",
                         timeout=5)
    assert resp.status == 422 and body["error"] == "memory_limit", resp


def test_429_busy(server_factory):
    srv = server_factory(fresh=True, PYEXEC_CONCURRENCY="1", PYEXEC_QUEUE="0")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(srv.execute, SLEEP.format(s=2), 10)
        time.sleep(0.7)
        resp, body = execute(srv, SLEEP.format(s=0), 10)
        assert resp.status == 429 and body["error"] == "busy", resp
        check(running.result(), "POST", "/execute")


def test_503_shutting_down(server_factory):
    """Both kinds: a run stopped after the grace period, and a new run refused meanwhile."""
    srv = server_factory(fresh=True, PYEXEC_GRACE="2")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(srv.execute, SLEEP.format(s=30), 40)
        time.sleep(0.7)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = srv.execute(SLEEP.format(s=0), 5)
        assert late.status == 503 and late.header("Retry-After"), late
        assert check(late, "POST", "/execute")["error"] == "shutting_down"
        stopped = in_flight.result()
        assert stopped.status == 503 and check(stopped, "POST", "/execute")["error"] == \
            "shutting_down", stopped
    assert srv.proc.wait(10) == 0


def test_500_internal_and_healthz_503(tmp_path):
    if external_url():
        pytest.skip("starts a server of its own")
    srv = UnhealthyServer("unhealthy", {"PYEXEC_NSJAIL": "/nonexistent/nsjail"}, tmp_path)
    try:
        health = srv.get("/healthz")
        assert health.status == 503 and check(health, "GET", "/healthz")["status"] == \
            "unavailable", health
        check(srv.request("HEAD", "/healthz"), "HEAD", "/healthz")
        resp = srv.execute("def main():\n    return 1\n")
        assert resp.status == 500 and check(resp, "POST", "/execute")["error"] == "internal"
    finally:
        srv.stop()


def test_healthz_and_metrics(server):
    resp = server.get("/healthz")
    assert resp.status == 200 and check(resp, "GET", "/healthz")["status"] == "ok", resp
    for path in ("/healthz", "/metrics"):
        check(server.request("HEAD", path), "HEAD", path)
    resp = server.get("/metrics")
    assert resp.status == 200, resp
    check(resp, "GET", "/metrics")


def test_playground_paths(server, server_factory):
    for path in ("/", "/playground.js", "/playground.css"):
        assert server.get(path).status == 200
        check(server.get(path), "GET", path)
        check(server.request("HEAD", path), "HEAD", path)
    off = server_factory(PYEXEC_PLAYGROUND="off")
    for path in ("/", "/playground.js", "/playground.css"):
        resp = off.get(path)
        assert resp.status == 404 and check(resp, "GET", path)["error"] == "not_found", resp
        check(off.request("HEAD", path), "HEAD", path)


# --- paths and methods: the document and the server agree ------------------------------------

def test_every_documented_path_and_method_answers_and_no_other(server):
    for path, item in DOC["paths"].items():
        documented = {m.upper() for m in item if m.upper() in METHODS}
        for method in METHODS:
            body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
            resp = server.request(method, path, body=body,
                                  headers={"Content-Type": "application/json"})
            if method in documented:
                assert resp.status not in (404, 405), f"{method} {path}: {resp!r}"
                check(resp, method, path)
            else:
                assert resp.status == 405, f"{method} {path} is not documented: {resp!r}"
                check_component(resp, "MethodNotAllowed", method)
                allow = {m.strip() for m in resp.header("Allow").split(",")}
                assert allow == documented, f"{method} {path}: Allow {allow} != {documented}"


@pytest.mark.parametrize("path", ["/execute/", "/healthz/x", "/EXECUTE", "/index.html",
                                  "/openapi.yaml", "/playground", "//", "/metrics.json",
                                  "/docs/openapi.json", "/web/playground.js"])
def test_undocumented_paths_are_404(server, path):
    assert path not in DOC["paths"]
    for method in ("GET", "POST"):
        resp = server.request(method, path, body=b"{}" if method == "POST" else b"",
                              headers={"Content-Type": "application/json"})
        assert resp.status == 404, f"{method} {path}: {resp!r}"
        assert check_component(resp, "NotFound", method)["error"] == "not_found"


# --- the request schema agrees with what the server accepts ---------------------------------

REQUEST_SCHEMA = resolve(DOC["components"]["schemas"]["ExecuteRequest"])


@pytest.mark.parametrize("payload", [
    {"script": "def main():\n    return 1\n"},
    {"script": "def main():\n    return 1\n", "timeout": 0.5},
    {"script": "def main():\n    return 1\n", "timeout": 3},
])
def test_accepted_requests_match_the_schema(server, payload):
    validate(payload, REQUEST_SCHEMA, "request")
    assert server.post_json("/execute", payload).status == 200


@pytest.mark.parametrize("payload", [
    [], "x", {}, {"script": 1}, {"script": ""}, {"script": "x", "timeout": 0},
    {"script": "x", "timeout": -1}, {"script": "x", "timeout": "5"},
    {"script": "x", "timeout": True}, {"script": "x", "other": 1},
])
def test_refused_requests_fail_the_schema(server, payload):
    with pytest.raises(AssertionError):
        validate(payload, REQUEST_SCHEMA, "request")
    resp = server.post_json("/execute", json.dumps(payload).encode())
    assert resp.status == 400 and resp.json()["error"] == "invalid_request", resp
