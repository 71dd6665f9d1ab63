"""The API contract of DESIGN.md section 1, tested over HTTP."""

import concurrent.futures
import http.client
import json
import math
import signal
import socket
import time

import pytest

from pyexec_testlib import (
    assert_json_content_type,
    trickled_until_closed,
    assert_traceback_clean,
    check_healthy,
    external_url,
    expect_error,
    expect_ok,
    expect_result,
    expect_script_error,
)

OK_SCRIPT = "def main():\n    return 1\n"


# --- health and the happy path ------------------------------------------------

def test_healthz(server, tier):
    """The fixture saw a 200; this checks what the 200 says: healthy, the tier runs get, and a
    pool that fills (PYEXEC_POOL ready jails, 2 unless set)."""
    want = min(int(server.env.get("PYEXEC_POOL", "2")), 1)
    deadline = time.monotonic() + 30
    while True:
        resp = server.get("/healthz")
        assert resp.status == 200, resp
        assert_json_content_type(resp)
        body = resp.json()
        assert body["status"] == "ok" and "message" not in body, body
        assert body["tier"] == tier, body
        assert type(body["poolReady"]) is int and body["poolReady"] >= 0, body
        if body["poolReady"] >= want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["poolReady"] >= want, f"no ready jail after 30 s: {body}"


def test_happy_path_exact_body(server):
    script = "def main():\n    print('hi')\n    return {\"answer\": 42}\n"
    resp = server.execute(script, timeout=5)
    assert resp.status == 200, resp
    assert resp.json() == {"result": {"answer": 42}, "stdout": "hi\n"}
    expect_ok(resp)  # exact keys, Content-Type, X-Request-Id, X-Execution-Time-Ms
    assert (resp.header("X-Stdout-Truncated") or "").lower() != "true", resp


def test_request_ids_differ(server):
    ids = {server.execute(OK_SCRIPT).header("X-Request-Id") for _ in range(3)}
    assert len(ids) == 3 and None not in ids, ids


def test_execution_time_header_counts_the_run(server):
    resp = server.execute("import time\ndef main():\n    time.sleep(0.3)\n    return 1\n")
    expect_result(resp, 1)
    assert int(resp.header("X-Execution-Time-Ms")) >= 250, resp


def test_print_and_return_kept_apart(server):
    script = ("def main():\n"
              "    print('printed-line')\n"
              "    print('second', 2)\n"
              "    return 'returned-value'\n")
    body = expect_result(server.execute(script), "returned-value",
                         stdout="printed-line\nsecond 2\n")
    assert "returned-value" not in body["stdout"]


def test_stderr_merged_into_stdout_in_order(server):
    script = ("import sys\n"
              "def main():\n"
              "    print('a')\n"
              "    print('b', file=sys.stderr)\n"
              "    print('c')\n"
              "    return 0\n")
    expect_result(server.execute(script), 0, stdout="a\nb\nc\n")


def test_unicode_in_script_stdout_and_result(server):
    script = ("# coding: utf-8 — ünïcödé comment ✓\n"
              "def main():\n"
              "    s = 'héllo ✓ 🐍 世界'\n"
              "    print(s)\n"
              "    return {'ключ': '值 🐍', 'list': [s, 'ß']}\n")
    expect_result(server.execute(script),
                  {"ключ": "值 🐍", "list": ["héllo ✓ 🐍 世界", "ß"]},
                  stdout="héllo ✓ 🐍 世界\n")


@pytest.mark.parametrize("expr, expected", [
    ("0", 0),
    ("False", False),
    ("True", True),
    ("''", ""),
    ("[]", []),
    ("{}", {}),
    ("-17", -17),
    ("0.1", 0.1),
    ("1e300", 1e300),
    ("'a\\x00b'", "a\x00b"),
    ("'quote\" back\\\\slash\\n'", 'quote" back\\slash\n'),
    ("[1, 'two', 3.5, None, [True, {'k': None}]]", [1, "two", 3.5, None, [True, {"k": None}]]),
    ("(1, 2)", [1, 2]),
], ids=["zero", "false", "true", "empty-str", "empty-list", "empty-dict", "negative",
        "float", "big-float", "nul-in-str", "escapes", "nested", "tuple-as-list"])
def test_result_json_values(server, expr, expected):
    expect_result(server.execute(f"def main():\n    return {expr}\n"), expected)


@pytest.mark.parametrize("expr, expected", [
    ("2**70", 2**70),
    ("-(2**64) - 1", -(2**64) - 1),
    ("math.factorial(170)", math.factorial(170)),  # 307 digits: within a double's range
], ids=["2**70", "below-int64", "factorial-170"])
def test_result_big_integers_exact(server, expr, expected):
    # Kept with the exact digits Python wrote, up to a double's range (beyond it: see
    # test_numbers_clients_cannot_read_refused).
    resp = server.execute(f"import math\ndef main():\n    return {expr}\n")
    expect_result(resp, expected)


def test_numpy_matrix_product(server):
    script = ("import numpy as np\n"
              "def main():\n"
              "    a = np.arange(6).reshape(2, 3)\n"
              "    b = np.arange(6).reshape(3, 2)\n"
              "    return (a @ b).tolist()\n")
    expect_result(server.execute(script), [[10, 13], [28, 40]])


def test_pandas_groupby_sum(server):
    script = ("import pandas as pd\n"
              "def main():\n"
              "    df = pd.DataFrame({'k': ['a', 'b', 'a', 'c'], 'v': [1, 2, 3, 4]})\n"
              "    return {k: int(v) for k, v in df.groupby('k')['v'].sum().to_dict().items()}\n")
    expect_result(server.execute(script), {"a": 4, "b": 2, "c": 4})


def test_cwd_is_empty_tmp(server, tier):
    """The script starts in an empty directory of its own, which is also its HOME and TMPDIR:
    /tmp in the full tier, a private directory in the restricted one."""
    script = ("import os\ndef main():\n    cwd = os.getcwd()\n"
              "    return [cwd, os.environ['HOME'], os.environ['TMPDIR'], os.listdir(cwd)]\n")
    cwd, home, tmpdir, entries = expect_ok(server.execute(script))["result"]
    assert cwd == home == tmpdir and entries == [], (cwd, home, tmpdir, entries)
    if tier == "full":
        assert cwd == "/tmp"


def test_tmp_is_writable(server):
    script = ("import tempfile\n"
              "def main():\n"
              "    with open('data.txt', 'w') as f:\n"
              "        f.write('x' * 1000)\n"
              "    with open(tempfile.gettempdir() + '/data.txt') as f:\n"
              "        return len(f.read())\n")
    expect_result(server.execute(script), 1000)


def test_name_guard_does_not_run_main_twice(server):
    script = ("def main():\n"
              "    print('main ran')\n"
              "    return __name__\n"
              "\n"
              "if __name__ == '__main__':\n"
              "    main()\n")
    body = expect_ok(server.execute(script))
    assert body["stdout"] == "main ran\n", body
    assert body["result"] != "__main__", body


def test_module_level_code_runs_once_before_main(server):
    script = "print('top')\ndef main():\n    print('main')\n    return 2\n"
    expect_result(server.execute(script), 2, stdout="top\nmain\n")


def test_async_main_is_awaited(server):
    script = ("import asyncio\n"
              "async def main():\n"
              "    await asyncio.sleep(0.01)\n"
              "    print('awaited')\n"
              "    return 'async-ok'\n")
    expect_result(server.execute(script), "async-ok", stdout="awaited\n")


def test_crlf_line_endings(server):
    expect_result(server.execute("def main():\r\n    print('crlf')\r\n    return 4\r\n"), 4,
                  stdout="crlf\n")


def test_big_result_and_big_stdout_together(server):
    # both pipes carry ~900 kB at once: neither may block the other
    script = ("import sys\n"
              "def main():\n"
              "    sys.stdout.write('o' * 900000)\n"
              "    return 'r' * 900000\n")
    resp = server.execute(script, timeout=20)
    body = expect_ok(resp)
    assert body["result"] == "r" * 900000
    assert body["stdout"] == "o" * 900000
    assert (resp.header("X-Stdout-Truncated") or "").lower() != "true", resp


def test_main_with_default_argument_is_callable(server):
    expect_result(server.execute("def main(x=5):\n    return x\n"), 5)


def test_lambda_main(server):
    expect_result(server.execute("main = lambda: 'lam'\n"), "lam")


@pytest.mark.parametrize("timeout", [1, 1.5, 5])
def test_valid_timeouts_accepted(server, timeout):
    expect_result(server.execute(OK_SCRIPT, timeout=timeout), 1)


# --- request validation -------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"",
    b"not json",
    b"{",
    b'{"script": "def main(): return 1"',
    b'{"script": "def main(): return 1",}',
    b"{'script': 'x'}",
    b'{"script": "\xff\xfe def main(): return 1"}',
    b'{"script": "caf\xe9"}',
], ids=["empty", "garbage", "open-brace", "truncated", "trailing-comma", "single-quotes",
        "invalid-utf8", "latin1"])
def test_invalid_json(server, body):
    expect_error(server.post_json("/execute", body), 400, "invalid_json")


@pytest.mark.parametrize("payload", [
    [],
    "x",
    42,
    None,
    {},
    {"script": 1},
    {"script": None},
    {"script": ["def main(): return 1"]},
    {"script": ""},
    {"script": OK_SCRIPT, "timeout": 0},
    {"script": OK_SCRIPT, "timeout": -1},
    {"script": OK_SCRIPT, "timeout": 61},
    {"script": OK_SCRIPT, "timeout": 1e9},
    {"script": OK_SCRIPT, "timeout": "5"},
    {"script": OK_SCRIPT, "timeout": True},
    {"script": OK_SCRIPT, "timeout": [5]},
], ids=["list", "string", "number", "null", "no-script", "script-int", "script-null",
        "script-list", "script-empty", "timeout-0", "timeout-negative", "timeout-over-max",
        "timeout-huge", "timeout-string", "timeout-bool", "timeout-list"])
def test_invalid_request(server, payload):
    expect_error(server.post_json("/execute", payload), 400, "invalid_request")


@pytest.mark.parametrize("field", ["scirpt", "timeuot", "stdni", "file"])
def test_unknown_field_named_in_message(server, field):
    payload = {"script": OK_SCRIPT, field: "x"} if field != "scirpt" else {"scirpt": OK_SCRIPT}
    body = expect_error(server.post_json("/execute", payload), 400, "invalid_request")
    assert field in body["message"], body


def test_timeout_over_configured_max(small_server):
    # small_server: PYEXEC_MAX_TIMEOUT=5
    expect_error(small_server.execute(OK_SCRIPT, timeout=6), 400, "invalid_request")
    expect_error(small_server.execute(OK_SCRIPT, timeout=5.5), 400, "invalid_request")
    expect_result(small_server.execute(OK_SCRIPT, timeout=5), 1)


@pytest.mark.parametrize("method, path", [
    ("GET", "/index.html"),  # "/" is the playground (test_playground.py)
    ("GET", "/nope"),
    ("POST", "/nope"),
    ("GET", "/execute/extra"),
    ("GET", "/healthz/x"),
])
def test_not_found(server, method, path):
    headers = {"Content-Type": "application/json"} if method == "POST" else None
    body = json.dumps({"script": OK_SCRIPT}) if method == "POST" else b""
    expect_error(server.request(method, path, body=body, headers=headers), 404, "not_found")


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/execute", "POST"),
    ("PUT", "/execute", "POST"),
    ("DELETE", "/execute", "POST"),
    ("PATCH", "/execute", "POST"),
    ("POST", "/healthz", "GET"),
    ("DELETE", "/healthz", "GET"),
    ("POST", "/", "GET"),
    ("PUT", "/openapi.json", "GET"),
])
def test_method_not_allowed(server, method, path, allowed):
    headers = {"Content-Type": "application/json"}
    body = json.dumps({"script": OK_SCRIPT}) if method in ("POST", "PUT", "PATCH") else b""
    resp = server.request(method, path, body=body, headers=headers)
    expect_error(resp, 405, "method_not_allowed")
    allow = resp.header("Allow") or ""
    assert allowed in [m.strip().upper() for m in allow.split(",")], resp


@pytest.mark.parametrize("ctype", [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/jsonp",
])
def test_unsupported_media_type(server, ctype):
    body = json.dumps({"script": OK_SCRIPT})
    resp = server.request("POST", "/execute", body=body, headers={"Content-Type": ctype})
    expect_error(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8"])
def test_json_content_types_accepted(server, ctype):
    resp = server.post_json("/execute", {"script": OK_SCRIPT}, content_type=ctype)
    expect_result(resp, 1)


def test_payload_too_large_small_cap(small_server):
    # small_server: PYEXEC_BODY_MAX=1000
    script = "def main():\n    return 1\n" + "#" * 2000 + "\n"
    expect_error(small_server.execute(script), 413, "payload_too_large")
    fits = "def main():\n    return 7\n" + "#" * 800 + "\n"
    expect_result(small_server.execute(fits), 7)


def test_payload_too_large_default_cap(server):
    # The default cap is 16 MiB: room for PYEXEC_INPUT_BYTES (8 MiB) as base64.
    script = "def main():\n    return 1\n" + "#" * (17 * 1024 * 1024) + "\n"
    expect_error(server.execute(script), 413, "payload_too_large")
    assert server.get("/healthz").status == 200


def test_large_body_under_default_cap_accepted(server):
    script = "def main():\n    return 3\n" + "# padding\n" * 90000  # ~900 kB
    expect_result(server.execute(script), 3)


# --- script-level errors --------------------------------------------------------

def test_syntax_error_names_the_line(server):
    script = "x = 1\ny = = 2\ndef main():\n    return 1\n"
    body = expect_script_error(server.execute(script), "syntax_error")
    assert "line 2" in body["message"], body
    assert "line 2" in body["traceback"], body
    assert_traceback_clean(body["traceback"], body)
    assert body["stdout"] == ""


@pytest.mark.parametrize("script", [
    "x = 1\n",
    "def mian():\n    return 1\n",
    "# only a comment\n",
    "class Main:\n    pass\n",
], ids=["assignment", "typo", "comment", "class-Main"])
def test_no_main(server, script):
    expect_script_error(server.execute(script), "no_main")


@pytest.mark.parametrize("script", [
    "main = 3\n",
    "main = 'def main(): pass'\n",
    "def main(x):\n    return x\n",
    "def main(a, b=1):\n    return a\n",
], ids=["int", "str", "one-arg", "required-arg"])
def test_main_not_callable(server, script):
    expect_script_error(server.execute(script), "main_not_callable")


def test_exception_traceback(server):
    script = ("def helper():\n"
              "    raise ValueError('boom 123')\n"
              "\n"
              "\n"
              "def main():\n"
              "    print('before the error')\n"
              "    return helper()\n")
    body = expect_script_error(server.execute(script), "exception")
    assert body["stdout"] == "before the error\n", body
    tb = body["traceback"]
    assert_traceback_clean(tb, body)
    assert 'File "<script>"' in tb, tb
    assert "line 2" in tb and "line 7" in tb, tb
    assert "helper" in tb, tb
    assert "ValueError: boom 123" in tb, tb


def test_exception_with_unicode_message(server):
    script = "def main():\n    raise ValueError('ошибка ✓ 🐍')\n"
    body = expect_script_error(server.execute(script), "exception")
    assert "ValueError: ошибка ✓ 🐍" in body["traceback"], body


def test_exception_at_module_level(server):
    script = "print('loading')\nraise KeyError('at import')\ndef main():\n    return 1\n"
    body = expect_script_error(server.execute(script), "exception")
    assert body["stdout"] == "loading\n", body
    assert "line 2" in body["traceback"] and "KeyError" in body["traceback"], body
    assert_traceback_clean(body["traceback"], body)


def test_exception_in_async_main(server):
    script = "async def main():\n    raise RuntimeError('async boom')\n"
    body = expect_script_error(server.execute(script), "exception")
    assert "async boom" in body["traceback"], body
    assert_traceback_clean(body["traceback"], body)


@pytest.mark.parametrize("expr, needle", [
    ("None", "None"),
    ("float('nan')", None),
    ("float('inf')", None),
    ("[1, float('-inf')]", None),
    ("{1, 2}", "set"),
    ("{(1, 2): 3}", "tuple"),
    ("object()", "object"),
    ("b'bytes'", "bytes"),
    ("{'k': {1, 2}}", "set"),
], ids=["none", "nan", "inf", "nested-inf", "set", "tuple-key", "object", "bytes",
        "nested-set"])
def test_result_not_json(server, expr, needle):
    imp = "import numpy\n" if "numpy" in expr else ""
    body = expect_script_error(server.execute(f"{imp}def main():\n    return {expr}\n"),
                               "result_not_json")
    if needle is not None:
        assert needle in body["message"], body


@pytest.mark.parametrize("expr, expected", [
    ("np.int64(7)", 7),
    ("np.uint8(255)", 255),
    ("np.int64(2) ** 62", 2 ** 62),
    ("np.float32(0.5)", 0.5),
    ("np.float64(1.25)", 1.25),
    ("np.bool_(True)", True),
    ("np.arange(3)", [0, 1, 2]),
    ("np.array([[1.5, 2], [3, 4]])", [[1.5, 2.0], [3.0, 4.0]]),
    ("np.array([True, False])", [True, False]),
    ("np.array(5)", 5),
    ("np.zeros((0, 3))", []),
    ("{'total': pd.DataFrame({'v': [1, 2, 3]})['v'].sum()}", {"total": 6}),
    ("{'mean': pd.Series([1, 2]).mean(), 'n': [np.int32(1), np.float16(2)]}",
     {"mean": 1.5, "n": [1, 2.0]}),
], ids=["int64", "uint8", "int64-big", "float32", "float64", "bool", "arange", "2d-float",
        "bool-array", "0d-array", "empty-2d", "pandas-sum", "nested-mixed"])
def test_numpy_values_are_their_json(server, expr, expected):
    script = f"import numpy as np\nimport pandas as pd\ndef main():\n    return {expr}\n"
    resp = server.execute(script)
    expect_result(resp, expected)
    # the exact JSON type, not merely an equal value (True == 1 in Python)
    assert json.dumps(resp.json()["result"]) == json.dumps(expected), resp


@pytest.mark.parametrize("expr, needles", [
    ("np.float64('nan')", ["NaN"]),
    ("np.array([1.0, np.inf])", ["NaN or Infinity"]),
    ("np.float32('-inf')", ["NaN or Infinity"]),
    ("np.array([1 + 2j])", ["numpy.ndarray", "complex128"]),
    ("np.complex64(1)", ["numpy.complex64"]),
    ("np.array(['a', None], dtype=object)", ["numpy.ndarray", "object"]),
    ("np.datetime64('2024-01-01')", ["numpy.datetime64", "str("]),
    ("np.timedelta64(5, 'ns')", ["numpy.timedelta64", "str("]),
    ("pd.DataFrame({'v': [1, 2]})", ["pandas.core.frame.DataFrame",
                                     'to_dict(orient="records")']),
    ("pd.Series([1, 2])", ["pandas.core.series.Series", ".tolist()"]),
    ("pd.Timestamp('2024-01-01')", ["Timestamp", ".isoformat()"]),
    ("datetime.date(2024, 1, 1)", ["datetime.date", ".isoformat()"]),
    ("decimal.Decimal('1.5')", ["decimal.Decimal", "str("]),
    ("np.ma.masked_array([1, 2], mask=[0, 1])", ["MaskedArray"]),
], ids=["nan", "inf-in-array", "float32-inf", "complex-array", "complex", "object-array",
        "datetime64", "timedelta64", "dataframe", "series", "timestamp", "date", "decimal", "masked"])
def test_numpy_and_pandas_refused_with_hint(server, expr, needles):
    script = ("import datetime, decimal\nimport numpy as np\nimport pandas as pd\n"
              f"def main():\n    return {expr}\n")
    body = expect_script_error(server.execute(script), "result_not_json")
    for needle in needles:
        assert needle in body["message"], body
    assert "a set to a list" not in body["message"], body


def test_huge_numpy_array_is_too_large_not_out_of_memory(small_server):
    # small_server: PYEXEC_RESULT_MAX=100; 10**7 elements are refused before .tolist()
    script = "import numpy as np\ndef main():\n    return np.zeros(10**7, dtype=np.int8)\n"
    expect_script_error(small_server.execute(script), "result_too_large")


@pytest.mark.parametrize("expr, needle", [
    ("10 ** 100_000", "digits"),
    ("[1, -(10 ** 5000)]", "digits"),
    ("{'n': 10 ** 309}", "range of a double"),
    ("float(10 ** 308) * 10 if False else [10 ** 400]", "range of a double"),
], ids=["100k-digits", "5k-digits-negative", "309-digits", "400-digits"])
def test_numbers_clients_cannot_read_refused(server, expr, needle):
    script = f"import sys\nsys.set_int_max_str_digits(0)\ndef main():\n    return {expr}\n"
    resp = server.execute(script)
    json.loads(resp.body)  # with Python's defaults, as any client would
    body = expect_script_error(resp, "result_not_json")
    assert needle in body["message"] and "str(n)" in body["message"], body


def test_largest_readable_int_kept(server):
    script = "def main():\n    return [10 ** 307, -(10 ** 307)]\n"
    expect_result(server.execute(script), [10 ** 307, -(10 ** 307)])


@pytest.mark.parametrize("depth, ok", [(63, True), (64, False)])
def test_result_nesting_limit(server, depth, ok):
    script = f"def main():\n    x = 1\n    for _ in range({depth - 1}):\n        x = [x]\n" \
             "    return {'k': x}\n"
    resp = server.execute(script)
    json.loads(resp.body)
    if ok:
        expect_ok(resp)
    else:
        body = expect_script_error(resp, "result_not_json")
        assert "63 levels" in body["message"], body


def test_result_not_json_keeps_stdout(server):
    body = expect_script_error(server.execute("def main():\n    print('p')\n"),
                               "result_not_json")
    assert body["stdout"] == "p\n", body


def test_result_too_large_small_cap(small_server):
    # small_server: PYEXEC_RESULT_MAX=100
    expect_script_error(small_server.execute("def main():\n    return 'x' * 200\n"),
                        "result_too_large")
    expect_result(small_server.execute("def main():\n    return 'y' * 50\n"), "y" * 50)


def test_result_too_large_default_cap(server):
    expect_script_error(server.execute("def main():\n    return 'x' * (2 * 1024 * 1024)\n"),
                        "result_too_large")


def test_timeout_keeps_stdout(server):
    script = ("import time\n"
              "def main():\n"
              "    print('started', flush=True)\n"
              "    time.sleep(5)\n"
              "    return 1\n")
    resp = server.execute(script, timeout=1)
    body = expect_script_error(resp, "timeout")
    assert body["stdout"] == "started\n", body
    assert resp.elapsed < 4, resp


def test_fractional_timeout_enforced(server):
    resp = server.execute("import time\ndef main():\n    time.sleep(3)\n", timeout=0.5)
    expect_script_error(resp, "timeout")
    assert resp.elapsed < 2.5, resp


def test_default_timeout_applies(small_server):
    # small_server: PYEXEC_TIMEOUT=2
    resp = small_server.execute("import time\ndef main():\n    time.sleep(10)\n")
    expect_script_error(resp, "timeout")
    assert 1.5 < resp.elapsed < 6, resp


@pytest.mark.parametrize("script", [
    "def main():\n    b = bytearray(8 * 1024 ** 3)\n    return len(b)\n",
    "def main():\n    x = []\n    while True:\n        x.append(bytearray(10 ** 7))\n",
    "def main():\n    raise MemoryError()\n",
], ids=["one-big-alloc", "growing", "raise-memoryerror"])
def test_memory_limit(small_server, script):
    # small_server: PYEXEC_MEMORY_MB=256
    resp = small_server.execute(script, timeout=5)
    expect_script_error(resp, "memory_limit")



FILL_THEN_RETURN = """keep = []
def main():
    for size in (1 << 20, 4096, 64):
        try:
            while True:
                keep.append(bytearray(size))
        except MemoryError:
            pass
    return list(range(200))
"""


@pytest.mark.parametrize("script", [
    FILL_THEN_RETURN,
    "import threading, time\nkeep = []\ndef fill():\n    try:\n        while True:\n"
    "            keep.append(str(len(keep)) * 50)\n    except MemoryError:\n"
    "        time.sleep(60)\ndef main():\n    for _ in range(4):\n"
    "        threading.Thread(target=fill, daemon=True).start()\n    time.sleep(1.5)\n"
    "    return 'done'\n",
], ids=["fill-then-return", "threads-fill-while-main-returns"])
def test_memory_left_to_the_runner_is_a_memory_limit(server, script):
    """A script that leaves no memory at all for the runner's own steps (encoding its result,
    the error's text) gets memory_limit or its result, never an internal error: with glibc's
    allocator in the zygote's runs, the runner's MemoryError escaped it (exit status 71, the
    zygote's message in stdout) or was reported as an exception."""
    resp = server.execute(script, timeout=10)
    if resp.status == 200:
        assert resp.json()["result"] in (list(range(200)), "done"), resp
    else:
        expect_script_error(resp, "memory_limit")
        assert "pyexec" not in resp.json()["stdout"], resp

# The runner keeps address space back (RLIMIT_AS) so that it can still report a MemoryError.
RESERVE = """import ctypes, sys
def main():
    frame = sys._getframe()
    while frame is not None and 'ballast' not in frame.f_locals:
        frame = frame.f_back
    reserve = frame.f_locals['ballast']
    view = (ctypes.c_char * 1).from_buffer(reserve)
    at = ctypes.addressof(view)
    del view
    mapping = None
    for line in open('/proc/self/smaps'):
        head = line.split()[0]
        if '-' in head and ':' not in head:
            start, end = (int(x, 16) for x in head.split('-'))
            mapping = start <= at < end
        elif mapping and line.startswith('Rss:'):
            return [len(reserve), int(line.split()[1])]
"""


def test_the_reserve_for_the_memory_report_costs_the_run_no_memory(server):
    """Kept back, never touched: a ready run does not hold a megabyte of its own for it."""
    size, rss_kib = expect_ok(server.execute(RESERVE))["result"]
    assert size >= 1 << 20, size
    assert rss_kib == 0, rss_kib


HOLD_RESERVE = """import sys
def main():
    global view
    frame = sys._getframe()
    while frame is not None and 'ballast' not in frame.f_locals:
        frame = frame.f_back
    view = memoryview(frame.f_locals['ballast'])
    raise MemoryError()
"""


def test_a_script_holding_the_reserve_still_gets_its_memory_report(server):
    """A script may reach the runner's reserve and keep a view of it (a mapping with a view
    cannot be closed): its MemoryError is still reported as memory_limit, not a crash."""
    expect_script_error(server.execute(HOLD_RESERVE), "memory_limit")


def test_memory_within_limit_is_fine(server):
    # 100 MB, touched, under the default 512 MB
    script = "def main():\n    b = bytearray(100 * 1024 * 1024)\n    b[::4096] = b'x' * len(b[::4096])\n    return len(b)\n"
    expect_result(server.execute(script), 100 * 1024 * 1024)


THREADS_THEN_ALLOCATE = """import threading
def main():
    go, hold, threads = threading.Event(), [], []
    def work(started):
        hold.append(bytes(4096))  # this thread's first malloc
        started.set()
        go.wait(20)
    for _ in range(6):
        started = threading.Event()
        threads.append(threading.Thread(target=work, args=(started,)))
        threads[-1].start()
        started.wait(20)
    big = bytearray(250 * 1024 * 1024)
    go.set()
    for t in threads:
        t.join()
    return len(big)
"""


def test_memory_within_limit_is_fine_in_threads(server):
    """Six threads that have allocated, then 250 of the 512 MB: glibc gave each thread an
    arena of its own, 64 MiB of address space that RLIMIT_AS counts, and the run had 453 MB
    of it before the 250 (a sixth thread could fail to start). All threads share one arena."""
    expect_result(server.execute(THREADS_THEN_ALLOCATE, timeout=30), 250 * 1024 * 1024)


@pytest.mark.parametrize("script", [
    "import os\ndef main():\n    print('dying', flush=True)\n    os.kill(os.getpid(), 9)\n    return 1\n",
    "import ctypes\ndef main():\n    return ctypes.string_at(0)\n",
    "import os\ndef main():\n    os.abort()\n",
], ids=["sigkill", "null-deref", "abort"])
def test_killed_by_signal(server, script):
    body = expect_script_error(server.execute(script, timeout=5), "killed")
    if "dying" in script:
        assert body["stdout"] == "dying\n", body


def test_stdout_truncated_small_cap(small_server):
    # small_server: PYEXEC_STDOUT_MAX=100
    resp = small_server.execute("def main():\n    print('0123456789' * 100)\n    return 'r'\n")
    body = expect_ok(resp)
    assert body["result"] == "r"
    assert resp.header("X-Stdout-Truncated") == "true", resp
    assert body["stdout"] == "0123456789" * 10, body


def test_stdout_truncation_never_splits_utf8(small_server):
    # 1 + 2*100 bytes; the cap of 100 falls in the middle of an 'é'
    resp = small_server.execute("def main():\n    print('a' + 'é' * 100)\n    return 1\n")
    body = expect_ok(resp)
    assert resp.header("X-Stdout-Truncated") == "true", resp
    out = body["stdout"]
    assert "\ufffd" not in out, body
    assert out == "a" + "é" * 49, body


def test_stdout_under_cap_not_truncated(small_server):
    resp = small_server.execute("def main():\n    print('short')\n    return 1\n")
    expect_result(resp, 1, stdout="short\n")
    assert (resp.header("X-Stdout-Truncated") or "").lower() != "true", resp


def test_error_answers_are_json(server):
    resp = server.get("/nope")
    assert_json_content_type(resp)
    assert set(resp.json()) >= {"error", "message"}


def test_sigterm_stops_server(server_factory):
    srv = server_factory(fresh=True, PYEXEC_TIMEOUT="3")
    expect_result(srv.execute(OK_SCRIPT), 1)
    srv.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    while srv.proc.poll() is None and time.monotonic() - start < 10:
        time.sleep(0.05)
    assert srv.proc.poll() is not None, "pyexecd did not exit within 10 s of SIGTERM"


def test_sigterm_drains_in_flight_run(server_factory):
    srv = server_factory(fresh=True)
    script = "import time\ndef main():\n    time.sleep(1.5)\n    return 'finished'\n"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(srv.execute, script, 10)
        time.sleep(0.5)  # the run is under way
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            late = srv.execute(OK_SCRIPT, http_timeout=10)
        except ConnectionRefusedError:
            late = None  # the listener is already closed: also "no new runs"
        except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
            pytest.fail(f"a request sent during shutdown was dropped ({exc!r}) instead of "
                        f"answered 503 shutting_down")
        in_flight = fut.result()
        if late is not None:
            expect_error(late, 503, "shutting_down")
    # the run that was under way is answered, not dropped
    if in_flight.status == 200:
        expect_result(in_flight, "finished")
    else:
        expect_error(in_flight, 503, "shutting_down")
    srv.proc.wait(15)


# --- oversized bodies from clients that write everything before reading --------------------

def _post_with_http_client(port, body):
    """What Python's http.client (and SDKs built on it) does: send the whole body, then read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/execute", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("over_mib", [1, 8])
def test_413_reaches_clients_that_write_the_whole_body_first(server, over_mib):
    # Past PYEXEC_BODY_MAX's default (16 MiB) by 1 and by 8 MiB.
    body = json.dumps({"script": "#" * ((16 + over_mib) * 1024 * 1024)}).encode()
    answers = [_post_with_http_client(server.port, body) for _ in range(20)]
    for status, payload in answers:
        assert status == 413 and payload["error"] == "payload_too_large", (status, payload)
    check_healthy(server)


def test_oversized_slow_body_not_kept_past_connection_timeout(server_factory):
    """An oversized body is read and discarded so that its client sees the 413, but a client
    that trickles it is cut off once PYEXEC_CONNECTION_TIMEOUT has passed since the request
    began, however often it sends a byte."""
    if external_url():
        pytest.skip("starts a server with its own PYEXEC_CONNECTION_TIMEOUT")
    srv = server_factory(PYEXEC_CONNECTION_TIMEOUT="2")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 4194304\r\n\r\n")
    assert trickled_until_closed(sock, b"#" * 1024), "the server kept reading an oversized body sent slowly for 15 s"
    check_healthy(srv)


def test_endless_chunked_body_is_cut_off(small_server):
    # small_server: PYEXEC_BODY_MAX=1000; a chunked body never says how long it is
    sock = socket.create_connection(("127.0.0.1", small_server.port), timeout=20)
    sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk, sent, closed = b"#" * 65536, 0, False
    try:
        while sent < 256 * 1024 * 1024:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        sock.close()
    assert closed, f"the server read {sent} bytes of an endless body"
    check_healthy(small_server)


def test_half_sent_bodies_cannot_take_the_servers_memory(server_factory):
    """Bodies held in memory have a budget ((concurrency + queue + 4) x PYEXEC_BODY_MAX): past
    it a new body is read and thrown away and answered 429, until the held ones go."""
    if external_url():
        pytest.skip("starts a server with small caps of its own")
    srv = server_factory(PYEXEC_BODY_MAX="100000", PYEXEC_CONCURRENCY="1", PYEXEC_QUEUE="0")
    big = "#" * 40000 + "\ndef main():\n    return 1\n"
    stalled = []
    try:
        for _ in range(6):  # 5 x 99 999 bytes held leave no room in the budget of 5 x 100 001
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n" + b" " * 99999)
            stalled.append(sock)
        time.sleep(0.5)
        # Bigger than what the server's HTTP library may still hold of the stalled ones.
        resp = srv.execute(big)
        assert resp.status == 429 and resp.json()["error"] == "busy", resp
        assert resp.header("Retry-After") == "1", resp
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 5
    while srv.execute(big).status == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    expect_result(srv.execute(big), 1)
