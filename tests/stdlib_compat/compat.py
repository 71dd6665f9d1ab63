"""Runs CPython's own test modules (Debian's libpython3.11-testsuite) inside the sandbox, one
POST /execute per module, and outside it as uid 65534 in a scratch directory, and compares.

    /usr/bin/python3 tests/stdlib_compat/compat.py [--fast | --suite numpy|pandas] [-j N] [MODULE...]

A module matches when no test that passed outside fails, errors or is skipped inside (nor is
missing). Every other difference must be listed, with its reason, in expected.txt beside this
file (and, for one tier only, in expected-TIER.txt); the check exits 1 on any difference not listed there, and on a module that loads on
neither side (a missing package measures nothing). It starts its own pyexecd
(build/pyexecd, tier $PYEXEC_TEST_ISOLATION) with generous limits, so that no configured limit
gets in the way, unless $PYEXEC_TEST_URL names a server already running.
"""

import argparse
import concurrent.futures
import fnmatch
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "http"))

from pyexec_testlib import Server, external_url, local_tier  # noqa: E402

PYTHON = "/usr/bin/python3"
NOBODY = 65534
MODULE_TIMEOUT = 300
LIMITS = {"PYEXEC_MAX_TIMEOUT": str(MODULE_TIMEOUT), "PYEXEC_MEMORY_MB": "2048",
          "PYEXEC_MAX_PROCS": "128", "PYEXEC_TMP_MB": "256", "PYEXEC_RESULT_MAX": "8388608",
          "PYEXEC_STDOUT_MAX": "1048576", "PYEXEC_CONCURRENCY": "2"}

# What users reach for: numbers, text, dates, files and archives, compression, hashing,
# serialization, concurrency, the OS, sockets and servers on localhost, tooling.
MODULES = """
test_math test_cmath test_decimal test_fractions test_statistics test_random test_int
test_float test_complex test_long test_bisect test_heapq test_operator
test_unicode test_string test_re test_textwrap test_difflib test_unicodedata test_codecs
test_format test_fstring test_bytes test_locale test_gettext test_shlex test_stringprep
test_datetime test_time test_calendar test_zoneinfo test_strftime test_strptime
test_collections test_itertools test_functools test_dataclasses test_enum test_typing
test_copy test_dict test_list test_set test_tuple test_deque test_array test_contextlib
test_contextlib_async test_abc test_weakref test_struct test_sort test_builtin
test_exceptions test_ordered_dict test_defaultdict test_graphlib
test_os test_shutil test_pathlib test_glob test_tempfile test_fileinput test_filecmp
test_io test_fileio test_memoryio test_stat test_tarfile test_zipfile test_zipimport
test_posixpath test_genericpath test_mmap test_fcntl test_zipapp
test_zlib test_gzip test_bz2 test_lzma
test_hashlib test_hmac test_secrets test_uuid test_base64 test_binascii
test_pickle test_pickletools test_copyreg test_shelve test_marshal test_json test_csv
test_xml_etree test_xml_etree_c test_minidom test_plistlib test_configparser test_dbm
test_dbm_dumb
test_threading test_thread test_threading_local test_queue test_concurrent_futures
test_multiprocessing_spawn test_sched test_subprocess test_signal test_select test_selectors
test_pwd test_grp test_platform test_sysconfig test_resource test_pty test_openpty test_posix
test_socket test_socketserver test_httpservers test_httplib test_urllib test_urllib2
test_urllib2_localnet test_urlparse test_http_cookies test_http_cookiejar test_email
test_smtplib test_xmlrpc test_logging test_asyncio.test_base_events test_asyncio.test_events
test_asyncio.test_futures test_asyncio.test_tasks test_asyncio.test_locks test_asyncio.test_queues
test_asyncio.test_streams test_asyncio.test_subprocess test_asyncio.test_server
test_asyncio.test_sock_lowlevel test_asyncio.test_unix_events test_asyncio.test_taskgroups
test_asyncio.test_timeouts test_asyncio.test_runners
test_argparse test_getopt test_pprint test_inspect test_traceback test_warnings
test_timeit test_cprofile test_profile test_tracemalloc test_mimetypes test_html
test_htmlparser test_ipaddress test_wave
""".split()

# test.support resources a module needs to load at all; each stays on 127.0.0.1 (the host may
# send no traffic elsewhere, and the jail cannot).
RESOURCES = {"test_socketserver": ["network"]}

# `make test` runs these: a module or two from each group, under a minute together.
FAST = """
test_math test_fractions test_re test_datetime test_zoneinfo test_collections test_pathlib
test_tempfile test_glob test_zlib test_gzip test_hashlib test_csv test_pwd
test_grp test_pty test_socketserver test_httpservers test_shlex test_base64 test_uuid
test_mimetypes test_configparser
""".split()

# numpy's and pandas' own suites (Debian's python3-numpy and python3-pandas), run with pytest:
# parts users lean on, each one request.
DIST = "/usr/lib/python3/dist-packages/"
SUITES = {
    "numpy": ["numpy/linalg/tests", "numpy/fft/tests", "numpy/lib/tests/test_function_base.py",
              "numpy/lib/tests/test_io.py", "numpy/core/tests/test_numeric.py",
              "numpy/random/tests/test_generator_mt19937.py", "numpy/ma/tests/test_core.py"],
    "pandas": ["pandas/tests/groupby/test_groupby.py", "pandas/tests/io/parser/test_read_fwf.py",
               "pandas/tests/io/formats/test_to_csv.py", "pandas/tests/reshape/merge/test_merge.py",
               "pandas/tests/frame/test_reductions.py", "pandas/tests/tools/test_to_datetime.py",
               "pandas/tests/resample/test_datetime_index.py", "pandas/tests/io/json/test_pandas.py",
               "pandas/tests/plotting/frame/test_frame.py"],
}

PYTEST_DRIVER = r'''
import contextlib, io, os, sys

TARGET = %r

class Outcomes:
    def __init__(self):
        self.seen = {}
    def pytest_runtest_logreport(self, report):
        if hasattr(report, "wasxfail"):
            outcome = "pass"  # an expected failure, or an xfail that passed
        elif report.skipped:
            outcome = "skip"
        elif report.failed:
            outcome = "fail" if report.when == "call" else "error"
        else:
            outcome = "pass"
        if self.seen.get(report.nodeid, "pass") == "pass":
            self.seen[report.nodeid] = outcome

def main():
    import pytest
    os.chdir(os.environ.get("TMPDIR", "/tmp"))
    outcomes = Outcomes()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = pytest.main([TARGET, "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                            "--rootdir", os.getcwd()], plugins=[outcomes])
    if not outcomes.seen:
        return {"import_error": f"pytest exit {int(code)}: " + sink.getvalue()[-500:]}
    return {"outcomes": outcomes.seen}
'''

# The script both sides run: main() runs one test module with unittest and returns each test's
# outcome. test.support's resources are those regrtest enables by default (none): no internet,
# no hour-long runs.
DRIVER = r'''
import io, os, sys, unittest, importlib, contextlib

MODULE, RESOURCES = %r, %r

class Outcomes(unittest.TestResult):
    """Each test's outcome: "pass", or why not ("fail: ...", "error: ...", "skip: ...")."""
    def __init__(self):
        super().__init__()
        self.seen = {}
    def note(self, test, kind, err=None, why=""):
        if err is not None:
            why = "".join(__import__("traceback").format_exception_only(err[0], err[1]))
        self.seen[test.id()] = f"{kind}: {why.strip()[-160:]}"
    def addSuccess(self, test):
        self.seen.setdefault(test.id(), "pass")
    def addFailure(self, test, err):
        self.note(test, "fail", err)
    def addError(self, test, err):
        self.note(test, "error", err)
    def addSkip(self, test, reason):
        self.note(test, "skip", why=str(reason))
    def addExpectedFailure(self, test, err):
        self.seen[test.id()] = "pass"
    def addUnexpectedSuccess(self, test):
        self.note(test, "fail", why="unexpected success")
    def addSubTest(self, test, subtest, err):
        if err is not None:
            self.note(test, "fail" if issubclass(err[0], test.failureException) else "error",
                      err)

def main():
    from test import support
    support.use_resources = RESOURCES
    sink = io.StringIO()
    result = Outcomes()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            suite = unittest.defaultTestLoader.loadTestsFromName("test." + MODULE)
        except BaseException as exc:
            return {"import_error": type(exc).__name__ + ": " + str(exc)[:500]}
        suite.run(result)
    return {"outcomes": result.seen}
'''

OUTSIDE = r'''
import json, sys
ns = {"__name__": "__script__"}
exec(compile(open(sys.argv[1]).read(), "<script>", "exec"), ns)
sys.argv = ["<script>"]
value = ns["main"]()
with open(OUT, "w") as f:
    json.dump(value, f)
'''


def driver(module):
    if "/" in module:
        return PYTEST_DRIVER % (DIST + module)
    return DRIVER % (module, RESOURCES.get(module, []))


def run_outside(module, timeout):
    with tempfile.TemporaryDirectory(prefix="compat-") as d:
        os.chown(d, NOBODY, NOBODY)
        script, out = Path(d) / "script.py", Path(d) / "out.json"
        script.write_text(driver(module))
        wrapper = OUTSIDE.replace("OUT", repr(str(out)))
        env = {"PATH": "/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run([PYTHON, "-I", "-c", wrapper, str(script)], cwd=d, env=env,
                                  user=NOBODY, group=NOBODY, extra_groups=[],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"timeout": True}
        if not out.exists():
            return {"crash": proc.stderr.decode("utf-8", "replace")[-500:]}
        return json.loads(out.read_text())


def run_inside(port, module, timeout):
    body = json.dumps({"script": driver(module), "timeout": timeout}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/execute", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout + 30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
        if answer.get("error") == "timeout":
            return {"timeout": True}
        return {"crash": f"{answer.get('error')}: {answer.get('message', '')[:500]}"}
    return answer["result"]


def differences(outside, inside):
    """Test ids that passed outside and did not pass inside, with both outcomes."""
    for side in (outside, inside):
        for key in ("import_error", "timeout", "crash"):
            if key in side:
                if side is outside:
                    return {"<module>": (f"outside: {key}", "")}
                return {"<module>": ("ran", f"inside: {key} {side[key]}")}
    o, i = outside["outcomes"], inside["outcomes"]
    return {t: ("pass", i.get(t, "missing")) for t, v in o.items()
            if v == "pass" and i.get(t) != "pass"}


def load_expected(path):
    """expected.txt: `PATTERN    # reason` lines (fnmatch patterns on test ids)."""
    rules = []
    for line in path.read_text().splitlines():
        text, _, reason = line.partition("#")
        if text.strip():
            rules.append((text.strip(), reason.strip()))
    return rules


def explained(test_id, rules):
    return next((reason for pattern, reason in rules if fnmatch.fnmatchcase(test_id, pattern)),
                None)


def compare(port, module, timeout):
    start = time.monotonic()
    inside = run_inside(port, module, timeout)
    outside = run_outside(module, timeout)
    return module, outside, inside, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("modules", nargs="*")
    ap.add_argument("--fast", action="store_true", help="only the subset `make test` runs")
    ap.add_argument("--suite", choices=["stdlib", *SUITES], default="stdlib",
                    help="CPython's test modules (default), or numpy's or pandas' own suite")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=MODULE_TIMEOUT)
    ap.add_argument("--json", help="write every outcome here")
    args = ap.parse_args()
    modules = args.modules or (SUITES[args.suite] if args.suite in SUITES
                               else FAST if args.fast else MODULES)
    testdir = Path(sys.base_prefix) / "lib" / "python3.11" / "test"
    if not (testdir / "test_math.py").exists() and not Path("/usr/lib/python3.11/test/test_math.py").exists():
        print("libpython3.11-testsuite is not installed (apt install libpython3.11-testsuite)")
        return 2
    rules = load_expected(HERE / "expected.txt")
    tier_rules = HERE / f"expected-{local_tier()}.txt"
    if tier_rules.exists():
        rules += load_expected(tier_rules)
    server = None
    if external_url():
        port = int(external_url().rsplit(":", 1)[1].strip("/"))
    else:
        logs = Path(tempfile.mkdtemp(prefix="stdlib-compat-"))
        # Restricted tier: run uids of a block no test session of tests/http takes (below
        # 2097152, the highest uid a USTAR tar header holds).
        uid = 1_000_000 + 1024 * random.randrange(1000)
        server = Server("compat", {**LIMITS, "PYEXEC_RUN_UID": str(uid)}, logs, start_timeout=30)
        port = server.port
    print(f"stdlib-compat: {len(modules)} modules, tier {local_tier()}, "
          f"inside pyexecd :{port} and outside as uid {NOBODY}")
    matched = unexpected = neither = 0
    report = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(compare, port, m, args.timeout) for m in modules]
            for fut in concurrent.futures.as_completed(futures):
                module, outside, inside, took = fut.result()
                if "import_error" in outside and outside == inside:
                    neither += 1
                    print(f"  NOT RUN   {module}: on neither side ({outside['import_error'][:200]})")
                    continue
                diff = differences(outside, inside)
                ran = len(outside.get("outcomes", {}))
                reasons = {t: explained(f"{module}:{t}", rules) for t in diff}
                bad = sorted(t for t, r in reasons.items() if r is None)
                report[module] = {"outside": outside, "inside": inside, "diff": diff}
                if not diff:
                    matched += 1
                    print(f"  match     {module} ({ran} tests, {took:.0f} s)")
                elif not bad:
                    matched += 1
                    print(f"  match     {module} ({ran} tests, {took:.0f} s; "
                          f"{len(diff)} expected differences)")
                else:
                    unexpected += 1
                    print(f"  DIFFERS   {module} ({ran} tests, {took:.0f} s): "
                          f"{len(bad)} unexpected")
                    for t in bad[:25]:
                        print(f"      {module}:{t}  outside {diff[t][0]}, inside {diff[t][1]}")
                    if len(bad) > 25:
                        print(f"      ... and {len(bad) - 25} more")
                sys.stdout.flush()
    finally:
        if server:
            server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    print(f"stdlib-compat: {matched} of {len(modules)} modules match "
          f"(expected differences aside); {unexpected} differ; {neither} run on neither side")
    return 1 if unexpected or neither else 0


if __name__ == "__main__":
    sys.exit(main())
