"""Fixtures for the black-box HTTP tests: start pyexecd on 127.0.0.1 and stop it.

Run from the repo root with Debian's interpreter:

    /usr/bin/python3 -m pytest tests/http

The server binary is $PYEXEC_TEST_BINARY (relative paths are taken from the repo
root), default build/pyexecd.  nsjail must be on PATH.  The server's output goes
to a log file in pytest's tmp dir; its tail is attached to every failure report.

External mode: with PYEXEC_TEST_URL=http://127.0.0.1:PORT the `server` fixture is the
server already listening there (e.g. the Docker image, started by tests/image/run.sh)
and nothing is started; nsjail and the binary are then not needed here.  Tests that need
a server with other settings (small_server, server_factory) are skipped, since only local
mode can start one.  PYEXEC_TEST_SERVER_LOG (the server's log file) and
PYEXEC_TEST_SERVER_PID are optional; see pyexec_testlib.ExternalServer.
"""

import ctypes
import os

import pytest

from pyexec_testlib import (ExternalServer, Server, binary_path, external_url, local_tier,
                            nsjail_path)

# The limits of the "small" server: one server shared by every limit test.
SMALL_ENV = {
    "PYEXEC_BODY_MAX": "1000",
    "PYEXEC_STDOUT_MAX": "100",
    "PYEXEC_RESULT_MAX": "100",
    "PYEXEC_MAX_TIMEOUT": "5",
    "PYEXEC_TIMEOUT": "2",
    "PYEXEC_MEMORY_MB": "256",
}

_RUNNING = []  # every Server started in this session, for failure reports
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def _check_prerequisites():
    binary = binary_path()
    if not binary.is_file():
        pytest.exit(f"pyexecd binary not found at {binary} (run `make`, or set "
                    f"PYEXEC_TEST_BINARY)", returncode=1)
    if nsjail_path() is None:
        pytest.exit("nsjail was not found in .local/bin (scripts/build-nsjail) nor on PATH; the HTTP tests need it", returncode=1)


class _Factory:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.cache = {}
        self.fresh = []

    def __call__(self, fresh=False, prefix=(), **env):
        """Start (or reuse) a server with extra environment variables.

        Servers with the same env are shared within the session unless fresh=True
        (then the caller owns it and may stop it; it is stopped at the end anyway).
        """
        _check_prerequisites()
        env = {k: str(v) for k, v in env.items()}
        key = (tuple(prefix), tuple(sorted(env.items())))
        if not fresh and key in self.cache:
            srv = self.cache[key]
            if srv.alive():
                return srv
        name = "custom" if env else "default"
        try:
            srv = Server(name, env, self.log_dir, prefix=prefix)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        _RUNNING.append(srv)
        if fresh:
            self.fresh.append(srv)
        else:
            self.cache[key] = srv
        return srv

    def stop_all(self):
        """Stops every server and returns what went wrong at exit: a sanitizer report (the
        ASan+UBSan build runs this same suite) or a non-zero exit after SIGTERM."""
        problems = []
        for srv in list(self.cache.values()) + self.fresh:
            srv.stop()
            if srv in _RUNNING:
                _RUNNING.remove(srv)
            text = srv.log_path.read_bytes().decode("utf-8", "replace")
            for marker in SANITIZER_MARKERS:
                if marker in text:
                    at = text.index(marker)
                    problems.append(f"{srv.log_path}: {text[max(0, at - 200):at + 2000]}")
            # Under an outer nsjail (a prefix) the exit status is nsjail's: the log says.
            stopped = srv.prefix and "stopping (" in text
            if srv.proc.returncode != 0 and not stopped:
                problems.append(f"{srv.log_path}: exited {srv.proc.returncode} after SIGTERM")
        return problems


EXTERNAL_SKIP = ("PYEXEC_TEST_URL is set: this test needs a pyexecd started with other "
                 "settings (or one it may stop), which only local mode can start")


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory):
    if external_url():
        pytest.skip(EXTERNAL_SKIP)
    _check_prerequisites()
    factory = _Factory(tmp_path_factory.mktemp("pyexecd-logs"))
    yield factory
    problems = factory.stop_all()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="session")
def external_server():
    """The server at $PYEXEC_TEST_URL, started (and stopped) by someone else."""
    try:
        srv = ExternalServer(external_url())
        srv.wait_ready(float(os.environ.get("PYEXEC_TEST_START_TIMEOUT", "10")))
    except (ValueError, RuntimeError) as exc:
        pytest.exit(str(exc), returncode=1)
    _RUNNING.append(srv)
    return srv


@pytest.fixture(scope="session")
def server(request):
    """The default-configured server (only the canary environment added); in external mode,
    the server at $PYEXEC_TEST_URL."""
    if external_url():
        return request.getfixturevalue("external_server")
    return request.getfixturevalue("server_factory")()


@pytest.fixture(scope="session")
def restricted_server(request):
    """A server in the restricted tier: started here (this host allows both tiers), or the
    external one when that is what it runs."""
    if external_url():
        if suite_tier(request) != "restricted":
            pytest.skip("the external server does not run the restricted tier")
        return request.getfixturevalue("external_server")
    return request.getfixturevalue("server_factory")(PYEXEC_ISOLATION="restricted")


@pytest.fixture(scope="session")
def small_server(server_factory):
    """A server with small caps: body 1000 B, stdout 100 B, result 100 B,
    max timeout 5 s, default timeout 2 s, memory 256 MB."""
    return server_factory(**SMALL_ENV)


def host_landlock_abi():
    """This kernel's Landlock ABI version (0: none), as landlock_create_ruleset reports it."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)  # SYS_landlock_create_ruleset, VERSION
    return max(abi, 0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "full_tier_only(reason): a guarantee the restricted isolation tier does not "
        "give; listed in docs/security.md's tier table, and skipped with that reason there")
    config.addinivalue_line(
        "markers", "restricted_needs_landlock(reason): the restricted tier gives this only on a "
        "kernel with Landlock ABI 6; skipped there otherwise (and in external mode)")
    config.addinivalue_line(
        "markers", "restricted_needs_mounts(reason): the restricted tier gives this only where "
        "the server may mount a tmpfs per run; skipped there in external mode")
    config.addinivalue_line(
        "markers", "real_kernel_only(reason): needs the host's kernel to be the jail's (not "
        "gVisor's); listed in docs/security.md, and skipped with that reason under gVisor")


_TIER = {}


def suite_tier(request):
    """The tier of the servers under test: external mode asks /healthz, local mode starts
    servers with $PYEXEC_TEST_ISOLATION."""
    if not external_url():
        return local_tier()
    if "tier" not in _TIER:
        health = request.getfixturevalue("external_server").get("/healthz").json()
        _TIER["tier"] = health.get("tier") or "full"
    return _TIER["tier"]


@pytest.fixture
def tier(request):
    """The isolation tier of the server under test: "full" or "restricted"."""
    return suite_tier(request)


def suite_kernel(request):
    """The kernel the server under test runs on: what its /healthz reports when its operator
    set PYEXEC_HEALTH_DETAILS=1, else $PYEXEC_TEST_KERNEL (e.g. "gVisor"), else Linux."""
    if not external_url():
        return "Linux"  # local servers run on this host's kernel
    if "kernel" not in _TIER:
        health = request.getfixturevalue("external_server").get("/healthz").json()
        _TIER["kernel"] = ((health.get("isolation") or {}).get("kernel")
                           or os.environ.get("PYEXEC_TEST_KERNEL") or "Linux")
    return _TIER["kernel"]


@pytest.fixture(autouse=True)
def _tier_exceptions(request):
    marker = request.node.get_closest_marker("full_tier_only")
    if marker and suite_tier(request) != "full":
        pytest.skip(f"tier {suite_tier(request)} does not give this (docs/security.md, tier "
                    f"table): {marker.args[0]}")
    restricted = suite_tier(request) == "restricted"
    marker = request.node.get_closest_marker("restricted_needs_landlock")
    if marker and restricted and (external_url() or host_landlock_abi() < 6):
        pytest.skip(f"tier restricted without Landlock ABI 6 (docs/security.md, tier table): "
                    f"{marker.args[0]}")
    marker = request.node.get_closest_marker("restricted_needs_mounts")
    if marker and restricted and external_url():
        pytest.skip(f"tier restricted where the server may not mount (docs/security.md, tier "
                    f"table): {marker.args[0]}")
    marker = request.node.get_closest_marker("real_kernel_only")
    if marker and "gVisor" in suite_kernel(request):
        pytest.skip(f"under gVisor (docs/security.md, gVisor): {marker.args[0]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _RUNNING:
        for srv in _RUNNING:
            state = "running" if srv.alive() else f"exited {srv.proc.returncode}"
            rep.sections.append(
                (f"pyexecd {srv.name} :{srv.port} ({state}) {srv.log_path}",
                 srv.log_tail()))
