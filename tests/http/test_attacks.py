"""Hostile scripts and hostile requests.

Every test ends with check_healthy(): /healthz answers 200 and a trivial script
still returns the right value, so an attack that breaks the service fails here.
"""

import concurrent.futures
import http.client
import os
import socket
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from pyexec_testlib import (
    CANARY_ENV,
    CANARY_VALUE,
    COUNT_MARKED,
    REPO_ROOT,
    busy_script,
    check_healthy,
    expect_error,
    expect_ok,
    expect_result,
    expect_script_error,
    local_tier,
)

MIB = 1024 * 1024

# Read a path; say what happened without raising.
PROBE = '''
import os
def probe(path):
    try:
        if os.path.isdir(path):
            return "DIR:" + ",".join(sorted(os.listdir(path)))
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        return "READ:" + data.decode("latin-1")
    except BaseException as e:
        return "ERR:" + type(e).__name__
'''


def run_probe(server, path):
    resp = server.execute(PROBE + f"def main():\n    return probe({path!r})\n", timeout=5)
    return expect_ok(resp)["result"]


# --- host files and environment -------------------------------------------------

@pytest.mark.parametrize("path", [
    "/etc/shadow",
    "/etc/gshadow",
    "/root/.bash_history",
    "/root/.ssh/id_rsa",
    "/proc/kcore",
    "/dev/mem",
    "/dev/kmsg",
    "/sys/firmware/dmi/tables/DMI",
])
def test_host_secret_files_unreadable(server, path):
    got = run_probe(server, path)
    assert got.startswith("ERR:") or got == "READ:", f"{path} readable in the jail: {got[:200]!r}"
    check_healthy(server)


@pytest.mark.full_tier_only("the run sees the container's world-readable files (the image must hold no secret in one)")
@pytest.mark.parametrize("path", ["/root", "/home"])
def test_host_home_dirs_empty_or_absent(server, path):
    got = run_probe(server, path)
    assert got.startswith("ERR:") or got == "DIR:", f"{path} in the jail: {got[:300]!r}"
    check_healthy(server)


@pytest.mark.full_tier_only("the run sees the container's world-readable files (the image must hold no secret in one)")
def test_host_paths_absent(server):
    paths = ["/work", str(REPO_ROOT), str(REPO_ROOT / "src"), str(server.binary),
             str(server.log_path), "/work/shared/DESIGN.md", str(Path.home()),
             "/var/run/docker.sock", "/run/docker.sock"]
    script = (f"import os\nPATHS = {paths!r}\n"
              "def main():\n    return [p for p in PATHS if os.path.exists(p)]\n")
    visible = expect_ok(server.execute(script))["result"]
    # /root (Path.home() when running as root) may exist as an empty dir
    visible = [p for p in visible if p not in ("/root", "/home")]
    assert visible == [], f"host paths visible in the jail: {visible}"
    check_healthy(server)


STANDARD_ROOT = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "tmp",
                 "proc", "dev", "sys", "run", "var", "home", "root", "opt", "srv", "mnt",
                 "media", "boot", "lost+found"}


@pytest.mark.full_tier_only("the run sees the container's world-readable files (the image must hold no secret in one)")
def test_jail_root_has_no_host_entries(server):
    host_only = sorted(set(os.listdir("/")) - STANDARD_ROOT)
    script = "import os\ndef main():\n    return sorted(os.listdir('/'))\n"
    jail_root = expect_ok(server.execute(script))["result"]
    leaked = sorted(set(jail_root) & set(host_only))
    assert leaked == [], f"jail / = {jail_root}; host-specific entries visible: {leaked}"
    assert "work" not in jail_root
    check_healthy(server)


def test_environment_is_clean(server):
    script = "import os\ndef main():\n    return dict(os.environ)\n"
    jail_env = expect_ok(server.execute(script))["result"]
    assert not [k for k in jail_env if k.startswith("PYEXEC")], jail_env
    assert not [k for k in jail_env if k in CANARY_ENV], jail_env
    assert CANARY_VALUE not in repr(jail_env), jail_env
    allowed = {"PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "PWD",
               "SHLVL", "USER", "LOGNAME", "TMPDIR", "_", "PYTHONUNBUFFERED",
               "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONHASHSEED", "PYTHONUTF8",
               "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "OPENBLAS_NUM_THREADS",
               "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"}
    inherited = sorted((set(jail_env) & set(server.env)) - allowed)
    assert inherited == [], f"server environment variables seen in the jail: {inherited}"
    standard = {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
    host_path_dirs = set(server.env.get("PATH", "").split(":")) - standard - {""}
    jail_path_dirs = set(jail_env.get("PATH", "").split(":"))
    assert not (jail_path_dirs & host_path_dirs), f"host PATH leaked: {jail_env.get('PATH')}"
    check_healthy(server)


def test_proc_environ_has_no_canary(server):
    script = f'''
import os
def main():
    hits, seen = [], 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() and pid not in ("self", "thread-self"):
            continue
        try:
            with open(f"/proc/{{pid}}/environ", "rb") as f:
                data = f.read()
        except OSError:
            continue
        seen += 1
        if b"hunter2" in data or b"PYEXEC_" in data:
            hits.append(pid)
    try:
        with open("/proc/1/environ", "rb") as f:
            one = f.read()
    except OSError as e:
        one = b""
    for pid in ({server.pid}, {os.getpid()}):
        try:
            with open(f"/proc/{{pid}}/environ", "rb") as f:
                if b"hunter2" in f.read():
                    hits.append("host-pid-" + str(pid))
        except OSError:
            pass
    return {{"hits": hits, "seen": seen, "one_has_canary": b"hunter2" in one}}
'''
    got = expect_ok(server.execute(script))["result"]
    assert got["hits"] == [] and got["one_has_canary"] is False, got
    check_healthy(server)


@pytest.mark.full_tier_only("the run can see that other processes exist and their command lines")
def test_pid_namespace_hides_host_processes(server):
    script = '''
import os
def main():
    cmds = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmds.append(f.read().replace(b"\\0", b" ").decode("latin-1"))
            except OSError:
                pass
    return cmds
'''
    cmds = expect_ok(server.execute(script))["result"]
    joined = "\n".join(cmds)
    assert "pyexecd" not in joined and "nsjail" not in joined and "pytest" not in joined, cmds
    assert len(cmds) < 10, f"{len(cmds)} processes visible in the jail: {cmds[:20]}"
    check_healthy(server)


def test_never_root_and_no_capabilities(server, tier):
    script = '''
import os
def main():
    caps = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":")
                caps[k] = int(v.strip(), 16)
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "CapEff": caps.get("CapEff"), "CapPrm": caps.get("CapPrm")}
'''
    got = expect_ok(server.execute(script))["result"]
    assert got["uid"] == got["euid"] != 0 and got["gid"] != 0, got
    if tier == "full":
        assert got["uid"] == 65534, got
    else:  # a uid of the server's run range, never the server's own
        assert got["uid"] >= 1000 and got["uid"] != os.geteuid(), got
    assert got["CapEff"] == 0 and got["CapPrm"] == 0, got
    check_healthy(server)


@pytest.mark.real_kernel_only("the jail's processes live in gVisor's kernel, invisible in the "
                              "host's /proc that this test reads")
def test_jailed_processes_not_root_on_host(server):
    """Seen from the host, a process started by the script does not run as root."""
    marker = f"pyexec-owner-{uuid.uuid4().hex}"
    script = f'''
import os, sys, time
def main():
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3)", {marker!r}])
    time.sleep(1.5)
    return "ok"
'''
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(server.execute, script, 5)
        owners = {}
        while not fut.done():
            for pid in _host_pids_with(marker):
                try:
                    owners[pid] = os.stat(f"/proc/{pid}").st_uid
                except OSError:
                    pass
            time.sleep(0.05)
        expect_result(fut.result(), "ok")
    assert owners, "the jailed child was never seen from the host"
    assert 0 not in owners.values(), f"jailed processes run as host root: {owners}"
    check_healthy(server)


def _host_pids_with(marker):
    found = []
    needle = marker.encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


# --- network ----------------------------------------------------------------------

def _connect_script(family, addr):
    return f'''
import socket
def main():
    try:
        s = socket.socket({family}, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect({addr!r})
        return "CONNECTED"
    except BaseException as e:
        return "ERR:" + type(e).__name__
'''


@pytest.mark.parametrize("addr", [("169.254.169.254", 80), ("1.1.1.1", 443), ("8.8.8.8", 53)])
def test_no_outbound_network(server, addr):
    got = expect_ok(server.execute(_connect_script("socket.AF_INET", addr), timeout=5))["result"]
    assert got.startswith("ERR:"), f"connect to {addr}: {got}"
    check_healthy(server)


def test_cannot_reach_server_port(server):
    got = expect_ok(server.execute(
        _connect_script("socket.AF_INET", ("127.0.0.1", server.port)), timeout=5))["result"]
    assert got.startswith("ERR:"), f"the jail reached pyexecd on 127.0.0.1:{server.port}: {got}"
    check_healthy(server)


def test_cannot_reach_host_listener_on_loopback(server):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        script = _connect_script("socket.AF_INET", ("127.0.0.1", port))
        got = expect_ok(server.execute(script, timeout=5))["result"]
    assert got.startswith("ERR:"), got
    check_healthy(server)


@pytest.mark.restricted_needs_landlock("the run shares the container's network namespace, so an abstract AF_UNIX socket there is reachable unless Landlock scopes it")
def test_cannot_reach_host_abstract_unix_socket(server):
    name = f"\0pyexec-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
        lst.bind(name)
        lst.listen(1)
        got = expect_ok(server.execute(_connect_script("socket.AF_UNIX", name),
                                       timeout=5))["result"]
    assert got.startswith("ERR:"), f"abstract unix socket reachable: {got}"
    check_healthy(server)


def test_no_dns_and_no_udp(server):
    script = '''
import socket
def main():
    out = []
    try:
        socket.getaddrinfo("example.com", 80)
        out.append("DNS-OK")
    except BaseException as e:
        out.append("ERR:" + type(e).__name__)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("8.8.8.8", 53))
        out.append("UDP-SENT")
    except BaseException as e:
        out.append("ERR:" + type(e).__name__)
    return out
'''
    got = expect_ok(server.execute(script, timeout=5))["result"]
    assert all(x.startswith("ERR:") for x in got), got
    check_healthy(server)


# --- process and thread bombs ------------------------------------------------------

def test_fork_bomb(server):
    script = '''
import os, time
def main():
    n = 0
    for _ in range(10000):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.01)
        n += 1
    return n
'''
    resp = server.execute(script, timeout=3)
    assert resp.status in (200, 422), resp
    assert resp.elapsed < 3 + 5, resp
    if resp.status == 200:
        assert isinstance(resp.json()["result"], int)
    check_healthy(server)


def fork_until_refused(child_sleep, then=""):
    """A script that forks sleeping children until fork fails, and returns how many it got."""
    return f'''
import os, time
def main():
    n = 0
    for _ in range(5000):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep({child_sleep})
            os._exit(0)
        n += 1
{then}    return n
'''


def test_fork_limited(server):
    script = fork_until_refused(30)
    resp = server.execute(script, timeout=5)
    body = expect_ok(resp)
    assert body["result"] < 1000, f"forked {body['result']} processes: no process limit"
    assert resp.elapsed < 5 + 3, resp
    check_healthy(server)


def test_thread_bomb(server):
    script = '''
import threading, time
def main():
    n = 0
    for _ in range(100000):
        try:
            threading.Thread(target=time.sleep, args=(60,)).start()
        except BaseException:
            break
        n += 1
    return n
'''
    resp = server.execute(script, timeout=3)
    assert resp.status in (200, 422), resp
    assert resp.elapsed < 3 + 5, resp
    if resp.status == 200:
        assert resp.json()["result"] < 10000, resp
    check_healthy(server)


@pytest.mark.parametrize("how", ["return", "timeout"])
def test_no_processes_left_behind(server, how):
    """Detached grandchildren (own session, SIGTERM ignored) die with the run."""
    marker = f"pyexec-leftover-{uuid.uuid4().hex}"
    script = f'''
import os, sys, time
MARK = {marker!r}
{COUNT_MARKED}
def count():
    return count_marked(MARK)
def main():
    for i in range(3):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c",
                         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
                         MARK])
            os._exit(0)
    for _ in range(50):
        if count() >= 3:
            break
        time.sleep(0.02)
    print("alive=%d" % count(), flush=True)
    {"time.sleep(30)" if how == "timeout" else "pass"}
    return count()
'''
    resp = server.execute(script, timeout=2)
    if how == "return":
        expect_result(resp, 3, stdout="alive=3\n")
    else:
        body = expect_script_error(resp, "timeout")
        assert body["stdout"] == "alive=3\n", body
    assert resp.elapsed < 2 + 4, resp
    deadline = time.monotonic() + 5
    while _host_pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _host_pids_with(marker) == [], "jailed processes survived the run"
    check_healthy(server)


# --- memory -------------------------------------------------------------------------

@pytest.mark.parametrize("script", [
    "def main():\n    x = []\n    while True:\n        x.append(' ' * 10 ** 6)\n",
    "def main():\n    return len(bytearray(64 * 1024 ** 3))\n",
    "import numpy as np\ndef main():\n    return np.ones((10**5, 10**5)).sum()\n",
    "import numpy as np\ndef main():\n    return float(np.ones((16000, 16000)).sum())\n",
], ids=["list-growth", "bytearray-64g", "numpy-huge", "numpy-2g-touched"])
def test_memory_bomb(server, script):
    resp = server.execute(script, timeout=10)
    expect_script_error(resp, "memory_limit")
    check_healthy(server)


@pytest.mark.full_tier_only("memory is capped per process (RLIMIT_AS), not for the whole run: "
                             "no cgroup")
def test_memory_limit_covers_all_processes(small_server):
    """small_server: PYEXEC_MEMORY_MB=256. Four children touching 200 MB each (800 MB in all)
    must not all succeed: the limit is per run, not per process."""
    script = '''
import os, time
def main():
    kids = []
    for i in range(4):
        pid = os.fork()
        if pid == 0:
            b = bytearray(200 * 1024 * 1024)
            for j in range(0, len(b), 4096):
                b[j] = 1
            time.sleep(1)
            os._exit(0)
        kids.append(pid)
    ok = 0
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        ok += status == 0
    return ok
'''
    resp = small_server.execute(script, timeout=5)
    assert resp.status in (200, 422), resp
    if resp.status == 200:
        ok = resp.json()["result"]
        assert ok * 200 <= 256, f"{ok} processes of 200 MB each ran under a 256 MB limit: {resp!r}"
    else:
        assert resp.json()["error"] in ("memory_limit", "killed"), resp
    check_healthy(small_server)


@pytest.mark.real_kernel_only("gVisor keeps oom_score_adj as a number that nothing reads: the "
                              "host sees the whole sandbox as one process")
def test_oom_score_adj_is_high_and_fixed(server):
    script = '''
def main():
    with open("/proc/self/oom_score_adj") as f:
        before = int(f.read())
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
        lowered = True
    except OSError:
        lowered = False
    with open("/proc/self/oom_score_adj") as f:
        after = int(f.read())
    return [before, lowered, after]
'''
    before, lowered, after = expect_ok(server.execute(script))["result"]
    assert before == 1000 and after == 1000 and not lowered, (before, lowered, after)
    check_healthy(server)


def test_process_limit_is_per_run(server):
    """One run holding every process it may have does not stop another run from forking."""
    hog = fork_until_refused(3, then="    time.sleep(2)\n")
    other = ("import os\ndef main():\n    pid = os.fork()\n    if pid == 0:\n"
             "        os._exit(0)\n    os.waitpid(pid, 0)\n    return 'forked'\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(server.execute, hog, 6)
        time.sleep(0.8)
        expect_result(server.execute(other, timeout=5), "forked")
        assert fut.result().status == 200, fut.result()
    check_healthy(server)


# --- deadlines ------------------------------------------------------------------------

SIGTERM_IGNORED = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"


@pytest.mark.parametrize("script", [
    "def main():\n    while True:\n        pass\n",
    "import time\ndef main():\n    time.sleep(30)\n",
    SIGTERM_IGNORED + "def main():\n    while True:\n        pass\n",
    SIGTERM_IGNORED + "import time\ndef main():\n    time.sleep(30)\n",
    SIGTERM_IGNORED + "import signal\nfor s in (signal.SIGINT, signal.SIGHUP, signal.SIGALRM,"
    " signal.SIGXCPU, signal.SIGUSR1):\n    signal.signal(s, signal.SIG_IGN)\n"
    "def main():\n    while True:\n        pass\n",
    "import os, time\ndef main():\n    if os.fork() == 0:\n        os.setsid()\n"
    "        while True:\n            pass\n    time.sleep(30)\n",
    "import threading\ndef spin():\n    while True:\n        pass\n"
    "def main():\n    for _ in range(4):\n        threading.Thread(target=spin).start()\n"
    "    spin()\n",
    "import asyncio\nasync def main():\n    await asyncio.sleep(30)\n",
    "while True:\n    pass\n",
], ids=["spin", "sleep", "spin-sigterm-ignored", "sleep-sigterm-ignored",
        "spin-all-ignored", "setsid-child-spins", "threads-spin", "async-sleep",
        "module-level-spin"])
def test_deadline_enforced(server, script):
    resp = server.execute(script, timeout=1)
    expect_script_error(resp, "timeout")
    assert resp.elapsed < 1 + 3, f"answered after {resp.elapsed:.1f}s: {resp!r}"
    check_healthy(server)


def test_daemon_child_holding_stdout_does_not_hang(server):
    script = '''
import os, time
def main():
    if os.fork() == 0:
        time.sleep(30)
        os._exit(0)
    return "parent-done"
'''
    # The child holds stdout open for 30 s: the answer must come when main() returns, not
    # when the child lets go (a 422 timeout) nor at the run's deadline.
    resp = server.execute(script, timeout=20)
    expect_result(resp, "parent-done")
    assert resp.elapsed < 10, f"answered after {resp.elapsed:.1f} s of a 20 s timeout: {resp!r}"
    check_healthy(server)


# --- filesystem ---------------------------------------------------------------------

@pytest.mark.restricted_needs_mounts("without a tmpfs of its own the total size of a run's files is not capped, only each file (PYEXEC_TMP_MB)")
def test_fill_tmp(server):
    script = '''
import tempfile
def main():
    chunk = b"x" * (1 << 20)
    i = 0
    while True:
        with open(f"{tempfile.gettempdir()}/fill{i}", "wb") as f:
            for _ in range(8):
                f.write(chunk)
        i += 1
'''
    resp = server.execute(script, timeout=10)
    body = expect_script_error(resp, "exception")
    assert "OSError" in body["traceback"], body
    check_healthy(server)


@pytest.mark.parametrize("script", [
    "def main():\n    chunk = b'x' * (16 << 20)\n    with open('/tmp/big', 'wb') as f:\n"
    "        for _ in range(64):\n            f.write(chunk)\n    return 'wrote 1 GiB'\n",
    "def main():\n    with open('/tmp/sparse', 'wb') as f:\n        f.seek(1 << 30)\n"
    "        f.write(b'x')\n    return 'wrote sparse 1 GiB'\n",
], ids=["dense", "sparse"])
def test_one_gib_file(server, script):
    expect_script_error(server.execute(script, timeout=10), "exception")
    check_healthy(server)


@pytest.mark.parametrize("path", [
    "/usr/lib/python3/dist-packages/evil.py",
    "STDLIB/evil.py",
    "/usr/bin/evil",
    "/etc/evil.conf",
    "/etc/passwd",
])
def test_system_dirs_read_only(server, path):
    if path.startswith("STDLIB"):
        path = path.replace("STDLIB", sysconfig.get_paths()["stdlib"])
    script = f'''
def main():
    try:
        with open({path!r}, "a") as f:
            f.write("import os\\n")
        return "WROTE"
    except OSError as e:
        return "ERR:" + type(e).__name__
'''
    got = expect_ok(server.execute(script))["result"]
    assert got.startswith("ERR:"), f"wrote {path} inside the jail"
    check_healthy(server)


def test_planted_module_not_importable_later(server):
    name = f"evil_{uuid.uuid4().hex[:8]}"
    plant = f'''
import os, sys
def main():
    planted = []
    for d in ["/usr/lib/python3/dist-packages", "/tmp", "/"] + sys.path:
        try:
            with open(os.path.join(d or ".", "{name}.py"), "w") as f:
                f.write("PWNED = True\\n")
            planted.append(d)
        except OSError:
            pass
    return planted
'''
    planted = expect_ok(server.execute(plant))["result"]
    assert "/usr/lib/python3/dist-packages" not in planted, planted
    use = f'''
def main():
    try:
        import {name}
        return "IMPORTED"
    except ImportError:
        return "absent"
'''
    expect_result(server.execute(use), "absent")
    assert not Path(f"/usr/lib/python3/dist-packages/{name}.py").exists()
    check_healthy(server)


def test_tmp_not_shared_between_runs(server):
    """What a run writes to its temporary directory, or to any writable place it shares with
    other runs (the restricted tier's /tmp and /dev/shm), is gone before the next run."""
    marker = f"left-{uuid.uuid4().hex}"
    places = ["tempfile.gettempdir()", "'/tmp'", "'/dev/shm'", "'/var/tmp'"]
    first = f'''
import os, tempfile
def main():
    wrote = []
    for d in [{", ".join(places)}]:
        try:
            os.makedirs(os.path.join(d, {marker!r}, "sub"))
            with open(os.path.join(d, {marker!r}, "sub", "f"), "w") as f:
                f.write("x")
            wrote.append(d)
        except OSError:
            pass
    return wrote
'''
    wrote = expect_ok(server.execute(first))["result"]
    assert wrote, "the run could write nowhere"
    second = f'''
import os
def main():
    return [d for d in {wrote!r} if os.path.exists(os.path.join(d, {marker!r}))]
'''
    expect_result(server.execute(second), [])
    check_healthy(server)


# --- descriptors and output ----------------------------------------------------------

def test_fd_exhaustion_then_return(server):
    script = '''
import os
def main():
    fds = []
    try:
        while len(fds) < 1000000:
            fds.extend(os.pipe())
    except OSError:
        pass
    return len(fds)
'''
    body = expect_ok(server.execute(script, timeout=10))
    assert isinstance(body["result"], int) and body["result"] > 0, body
    check_healthy(server)


def test_hundred_mb_of_stdout(server):
    script = '''
import sys
def main():
    line = "y" * 1023 + "\\n"
    block = line * 1024
    for _ in range(100):
        sys.stdout.write(block)
    return "done"
'''
    resp = server.execute(script, timeout=30)
    body = expect_ok(resp)
    assert body["result"] == "done"
    assert resp.header("X-Stdout-Truncated") == "true", resp
    out = body["stdout"]
    assert 0 < len(out.encode("utf-8")) <= MIB, len(out)
    assert out.startswith("y" * 1023 + "\n"), out[:100]
    assert len(out.encode("utf-8")) > MIB - 8, "kept part is much shorter than the cap"
    check_healthy(server)


def test_stdout_flood_via_os_write(server):
    script = '''
import os
def main():
    buf = b"z" * (1 << 20)
    for _ in range(50):
        os.write(1, buf)
        os.write(2, buf)
    return 5
'''
    resp = server.execute(script, timeout=30)
    body = expect_ok(resp)
    assert body["result"] == 5
    assert resp.header("X-Stdout-Truncated") == "true", resp
    assert len(body["stdout"]) <= MIB
    check_healthy(server)


def test_invalid_utf8_and_nul_on_stdout(server):
    script = "import os\ndef main():\n    os.write(1, b'a\\xff\\x00b')\n    return 1\n"
    expect_result(server.execute(script), 1, stdout="a\ufffd\x00b")
    check_healthy(server)


def test_utf8_split_across_writes(server):
    script = ("import os, time\ndef main():\n    os.write(1, b'\\xc3')\n"
              "    time.sleep(0.05)\n    os.write(1, b'\\xa9!')\n    return 1\n")
    expect_result(server.execute(script), 1, stdout="é!")
    check_healthy(server)


@pytest.mark.parametrize("data, expected", [
    (b"\xc3", "\ufffd"),
    (b"\xed\xa0\x80", None),  # encoded surrogate: invalid UTF-8
    (b"\xf4\x90\x80\x80", None),  # above U+10FFFF
    (b"\xc0\xaf", None),  # overlong '/'
    (b"\x1b[2J\x07\r", "\x1b[2J\x07\r"),
])
def test_odd_bytes_on_stdout(server, data, expected):
    script = f"import os\ndef main():\n    os.write(1, {data!r})\n    return 1\n"
    body = expect_ok(server.execute(script))
    if expected is not None:
        assert body["stdout"] == expected, body
    else:
        assert body["stdout"] and set(body["stdout"]) == {"\ufffd"}, body
    check_healthy(server)


@pytest.mark.parametrize("script", [
    "def main():\n    return '\\ud800'\n",
    "def main():\n    return {'\\udfff': 1}\n",
    "def main():\n    print('\\ud800')\n    return 1\n",
], ids=["lone-surrogate-result", "lone-surrogate-key", "lone-surrogate-print"])
def test_lone_surrogates(server, script):
    resp = server.execute(script)
    assert resp.status in (200, 422), resp
    body = resp.json()  # strict UTF-8 decoding of the answer: no raw surrogate bytes
    if resp.status == 422:
        assert body["error"] in ("result_not_json", "exception"), resp
    else:
        assert set(body) == {"result", "stdout"}, resp
    check_healthy(server)


def test_huge_result(server):
    script = "def main():\n    return ['x' * 1000] * 5000\n"
    expect_script_error(server.execute(script), "result_too_large")
    check_healthy(server)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested_result(server, kind):
    wrap = "x = [x]" if kind == "list" else "x = {'a': x}"
    script = f"def main():\n    x = 1\n    for _ in range(100000):\n        {wrap}\n    return x\n"
    expect_script_error(server.execute(script, timeout=10), "result_not_json")
    check_healthy(server)


def test_moderately_nested_result(server):
    # 500 levels: fine for Python's json; the server must not choke either way
    script = "def main():\n    x = 1\n    for _ in range(500):\n        x = [x]\n    return x\n"
    resp = server.execute(script)
    assert resp.status in (200, 422), resp
    if resp.status == 200:
        depth, x = 0, resp.json()["result"]
        while isinstance(x, list):
            x, depth = x[0], depth + 1
        assert depth == 500 and x == 1
    else:
        expect_script_error(resp, "result_not_json")
    check_healthy(server)


FORGED = [
    b'READY\n{"status":"ok"}\n"forged"',
    b'{"result": "forged"}',
    b'\n{"result": "forged", "stdout": ""}\n',
    b'"forged"\n',
    b'{"ok": true, "result": "forged"}\n',
]


@pytest.mark.parametrize("ending", ["return", "os._exit", "module-level"])
def test_forged_frames_on_every_fd(server, ending):
    writes = f'''
import os
FORGED = {FORGED!r}
def forge():
    for fd in range(0, 21):
        for frame in FORGED:
            try:
                os.write(fd, frame)
            except OSError:
                pass
'''
    if ending == "return":
        script = writes + "def main():\n    forge()\n    return 'real'\n"
    elif ending == "os._exit":
        script = writes + "def main():\n    forge()\n    os._exit(0)\n"
    else:
        script = writes + "forge()\ndef main():\n    return 'real'\n"
    resp = server.execute(script)
    assert resp.status in (200, 422), resp
    body = resp.json()
    if resp.status == 200:
        assert body["result"] == "real", f"forged result accepted: {resp!r}"
        assert set(body) == {"result", "stdout"}
    else:
        assert body.get("result") != "forged" and "error" in body, resp
    if ending == "os._exit":
        assert resp.status == 422, f"os._exit after forging must be an error: {resp!r}"
    check_healthy(server)


FORGE_OPEN_FDS = '''
import os
def forge():
    for name in os.listdir("/proc/self/fd"):
        try:
            os.write(int(name), b'{"status":"ok"}\\n"forged"')
        except OSError:
            pass
'''


@pytest.mark.parametrize("ending, expected_error", [
    ("return 'real'", None),
    ("os._exit(3)", "exception"),
    ("os.kill(os.getpid(), 9)", "killed"),
], ids=["return", "os._exit-nonzero", "sigkill"])
def test_forged_frame_on_every_open_fd(server, ending, expected_error):
    """The result channel may sit on any descriptor: the script finds them all in
    /proc/self/fd.  A forged frame followed by a return, an exit or a death never becomes
    a success: the server trusts a frame only when the jail then exits cleanly."""
    script = FORGE_OPEN_FDS + f"def main():\n    forge()\n    {ending}\n"
    resp = server.execute(script)
    assert resp.status in (200, 422), resp
    body = resp.json()
    assert body.get("result") != "forged", f"forged frame accepted as the result: {resp!r}"
    if expected_error is None:
        if resp.status == 200:
            assert body["result"] == "real", resp
    else:
        expect_script_error(resp, expected_error)
    check_healthy(server)


def test_self_written_frame_is_only_its_own_answer(server):
    """The script runs in the runner's process, so it can do what the runner does: write a
    whole frame and exit 0 (docs/security.md). That gives it only an answer it could have
    returned: still exactly the contract's shape, and the service is unharmed."""
    script = FORGE_OPEN_FDS + "def main():\n    forge()\n    os._exit(0)\n"
    resp = server.execute(script)
    assert resp.status == 200, resp
    body = resp.json()
    assert set(body) == {"result", "stdout"}, resp
    assert body["result"] == "forged", resp
    check_healthy(server)


def test_refused_frame_says_why_in_the_log(server):
    """A frame the server cannot read answers result_not_json to the client; the operator
    finds in the log which rule it broke."""
    if not server.log_path.is_file():
        pytest.skip("the external server's log is not given (PYEXEC_TEST_SERVER_LOG)")
    script = FORGE_OPEN_FDS.replace('{"status":"ok"}\\n"forged"', '{"status":"maybe"}\\n')
    script += "def main():\n    forge()\n    os._exit(0)\n"
    expect_script_error(server.execute(script), "result_not_json")
    want = "result frame was refused: header status is neither ok nor error"
    # An external server's log reaches its file through a follower (docker logs -f): it may lag.
    deadline = time.monotonic() + 5
    while want not in (log := server.log_path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert want in log, log[-2000:]
    check_healthy(server)


@pytest.mark.parametrize("script", [
    "class Evil(dict):\n    def items(self):\n        raise RuntimeError('gotcha')\n"
    "def main():\n    return Evil(a=1)\n",
    "class M:\n    @property\n    def __signature__(self):\n        raise RuntimeError('sig')\n"
    "    def __call__(self):\n        return 1\nmain = M()\n",
    "import json\ndef boom(*a, **k):\n    raise RuntimeError('patched')\njson.dumps = boom\n"
    "def main():\n    return 1\n",
], ids=["dict-items-raises", "signature-raises", "json-dumps-patched"])
def test_runner_internals_never_leak(server, script, request):
    """User objects that raise inside the runner's own calls, or a script that patches the
    modules the runner uses: a clean answer (an error where the value cannot be encoded, the
    value where main() is fine), and nothing of the runner (its frames, its path) in any part
    of the answer, stdout included."""
    resp = server.execute(script)
    if request.node.callspec.id == "dict-items-raises":
        expect_script_error(resp, "result_not_json")
    else:
        assert resp.status == 200 and resp.json() == {"result": 1, "stdout": ""}, resp
    text = resp.body.decode("utf-8")
    for bad in ("runner", "/pyexec"):
        assert bad not in text, f"{bad!r} leaked in the answer: {resp!r}"
    check_healthy(server)


@pytest.mark.parametrize("fds", [[1], [1, 2], [0, 1, 2]])
def test_closing_std_descriptors(server, fds):
    script = f"import os\ndef main():\n    for fd in {fds!r}:\n        os.close(fd)\n    return 1\n"
    body = expect_ok(server.execute(script))
    assert body["result"] == 1, body
    check_healthy(server)


def test_closing_high_descriptors(server):
    script = '''
import os
def main():
    closed = 0
    for fd in range(3, 1024):
        try:
            os.close(fd)
            closed += 1
        except OSError:
            pass
    return closed
'''
    resp = server.execute(script, timeout=5)
    # the result channel may be gone: an error is fine, a hang or a 5xx is not
    assert resp.status in (200, 422), resp
    assert resp.elapsed < 5 + 3, resp
    check_healthy(server)


@pytest.mark.parametrize("script", [
    "import sys\ndef main():\n    sys.exit(0)\n",
    "import sys\ndef main():\n    sys.exit('bye')\n",
    "def main():\n    raise SystemExit(3)\n",
    "import os\ndef main():\n    os._exit(0)\n",
    "import os\ndef main():\n    print('x', flush=True)\n    os._exit(7)\n",
    "import sys\nsys.exit(0)\ndef main():\n    return 1\n",
    "import os\nos._exit(0)\ndef main():\n    return 1\n",
    "def main():\n    exit()\n",
], ids=["sys.exit0", "sys.exit-str", "SystemExit", "os._exit0", "os._exit7",
        "module-sys.exit", "module-os._exit", "builtin-exit"])
def test_exit_is_an_error(server, script):
    expect_script_error(server.execute(script), "exception")
    check_healthy(server)


@pytest.mark.parametrize("script", [
    "import os\ndef main():\n    os.kill(os.getppid(), 9)\n    return 1\n",
    "import os\ndef main():\n    os.kill(-1, 9)\n    return 1\n",
    "import os\ndef main():\n    os.kill(0, 9)\n    return 1\n",
    "import os\ndef main():\n    os.killpg(os.getpgid(0), 9)\n    return 1\n",
    "import os\ndef main():\n    try:\n        os.kill(SERVER_PID, 9)\n"
    "    except OSError as e:\n        return type(e).__name__\n    return 'sent'\n",
    "import os\ndef main():\n    try:\n        os.kill(1, 9)\n    except OSError:\n        pass\n    return 1\n",
], ids=["ppid", "minus-one", "zero", "pgrp", "server-pid", "pid-1"])
def test_kill_attempts(server, script):
    script = script.replace("SERVER_PID", str(server.pid))
    resp = server.execute(script, timeout=5)
    assert resp.status in (200, 422), resp
    assert server.alive()
    check_healthy(server)


SYSCALLS = {
    "mount": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "umount": "libc.umount2(b'/proc', 2)",
    "unshare-user": "libc.unshare(0x10000000)",
    "unshare-mount": "libc.unshare(0x00020000)",
    "unshare-net": "libc.unshare(0x40000000)",
    "ptrace-traceme": "libc.ptrace(0, 0, 0, 0)",
    "ptrace-attach-ppid": "libc.ptrace(16, os.getppid(), 0, 0)",
    "setuid0": "libc.setuid(0)",
    "chroot": "libc.chroot(b'/tmp')",
    "setns": "libc.setns(0, 0)",
    "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
    "bpf": "libc.syscall(321, 0, 0, 0)",
    "perf_event_open": "libc.syscall(298, 0, 0, -1, -1, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "kexec_load": "libc.syscall(246, 0, 0, 0, 0)",
    "init_module": "libc.syscall(175, 0, 0, b'')",
    "io_uring_setup": "libc.syscall(425, 1, 0)",
}


@pytest.mark.parametrize("name", sorted(SYSCALLS))
def test_dangerous_syscalls_fail(server, name):
    if name in ("keyctl", "bpf", "perf_event_open", "userfaultfd", "kexec_load",
                "init_module", "io_uring_setup") and os.uname().machine != "x86_64":
        pytest.skip("syscall numbers are for x86_64")
    script = ("import ctypes, os\n"
              "def main():\n"
              "    libc = ctypes.CDLL(None, use_errno=True)\n"
              f"    return [{SYSCALLS[name]}, ctypes.get_errno()]\n")
    resp = server.execute(script, timeout=5)
    body = expect_ok(resp)
    assert body["result"][0] == -1, f"{name} returned {body['result']} inside the jail"
    check_healthy(server)


# --- hostile requests ----------------------------------------------------------------

def test_huge_header(server):
    try:
        resp = server.request("GET", "/healthz", headers={"X-Big": "a" * 200000}, timeout=15)
        assert 400 <= resp.status < 500, resp
    except (OSError, http.client.HTTPException) as exc:
        # closing the connection on an oversized header is acceptable
        assert not isinstance(exc, TimeoutError), exc
    check_healthy(server)


def test_many_headers(server):
    headers = {f"X-H{i}": "v" * 50 for i in range(2000)}
    try:
        resp = server.request("GET", "/healthz", headers=headers, timeout=15)
        assert resp.status == 200 or 400 <= resp.status < 500, resp
    except (OSError, http.client.HTTPException) as exc:
        assert not isinstance(exc, TimeoutError), exc
    check_healthy(server)


def test_very_long_url(server):
    try:
        resp = server.request("GET", "/" + "a" * 100000, timeout=15)
        assert 400 <= resp.status < 500, resp
    except (OSError, http.client.HTTPException) as exc:
        assert not isinstance(exc, TimeoutError), exc
    check_healthy(server)


@pytest.mark.parametrize("body", [
    b"[" * 400000,
    b'{"script": "def main(): return 1", "timeout": ' + b"[" * 400000 + b"]" * 400000 + b"}",
    b'{"a":' * 150000 + b"1" + b"}" * 150000,
], ids=["open-brackets", "deep-timeout", "deep-objects"])
def test_deeply_nested_request_body(server, body):
    resp = server.post_json("/execute", body)
    assert resp.status == 400, resp
    code = resp.json().get("error")
    assert code in ("invalid_json", "invalid_request"), resp
    expect_error(resp, 400, code)
    check_healthy(server)


def test_nul_byte_in_script(server):
    resp = server.execute("def main():\n    return 1\n\x00\n")
    assert resp.status in (400, 422), resp
    body = resp.json()
    assert body["error"] in ("invalid_request", "invalid_json", "syntax_error"), resp
    check_healthy(server)


def test_stdin_gives_nothing(server):
    script = ("import sys\ndef main():\n    try:\n        return sys.stdin.read()\n"
              "    except Exception as e:\n        return 'ERR:' + type(e).__name__\n")
    got = expect_ok(server.execute(script))["result"]
    assert got == "" or got.startswith("ERR:"), got
    check_healthy(server)


def test_chunked_body_accepted(server):
    body = b'{"script": "def main():\\n    return 9\\n"}'
    resp = server.request("POST", "/execute", headers={"Content-Type": "application/json"},
                          chunks=[body[:10], body[10:25], body[25:]])
    expect_result(resp, 9)
    check_healthy(server)


def test_chunked_body_over_cap(small_server):
    # small_server: PYEXEC_BODY_MAX=1000, no Content-Length to check up front
    payload = b'{"script": "def main():\\n    return 1\\n' + b"#" * 5000 + b'"}'
    chunks = [payload[i:i + 500] for i in range(0, len(payload), 500)]
    resp = small_server.request("POST", "/execute",
                                headers={"Content-Type": "application/json"}, chunks=chunks)
    expect_error(resp, 413, "payload_too_large")
    check_healthy(small_server)


def test_lying_content_length(server):
    """Content-Length larger than what is sent, then the client goes away."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{\"script\": \"def main")
    check_healthy(server)


def test_slow_clients_do_not_block_others(server):
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        start = time.monotonic()
        check_healthy(server)
        assert time.monotonic() - start < 10
    finally:
        for s in socks:
            s.close()
    check_healthy(server)


def test_concurrent_runs_do_not_mix(server):
    def run(i):
        script = (f"import time\ndef main():\n    print('out-{i}')\n"
                  f"    time.sleep(0.3)\n    return {{'i': {i}}}\n")
        return i, server.execute(script, timeout=10)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    ok = 0
    for i, resp in results:
        if resp.status == 429:
            expect_error(resp, 429, "busy")
            assert resp.header("Retry-After"), resp
            continue
        expect_result(resp, {"i": i}, stdout=f"out-{i}\n")
        ok += 1
    assert ok >= 1
    check_healthy(server)


def test_burst_of_requests(server):
    """Far more runs at once than two cores: each is answered 200 or 429 busy, none dropped."""
    def run(i):
        script = f"import time\ndef main():\n    time.sleep(1)\n    return {i}\n"
        return i, server.execute(script, timeout=5, http_timeout=120)

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        results = list(pool.map(run, range(48)))
    statuses = {}
    for i, resp in results:
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        if resp.status == 429:
            expect_error(resp, 429, "busy")
            assert resp.header("Retry-After"), resp
        else:
            expect_result(resp, i)
    assert statuses.get(200, 0) >= 1, statuses
    check_healthy(server)


def test_forked_child_that_fails_exits_non_zero(server):
    """A child forked by main() that raises ends like an uncaught exception (status 1), not
    silently with 0; one that returns ends with 0; neither reports a frame of its own."""
    script = '''
import os
def main():
    pid = os.fork()
    if pid == 0:
        if os.environ.get("FAIL_CHILD", "1") == "1":
            raise RuntimeError("child failed")
        return "child"
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
'''
    body = expect_ok(server.execute(script))
    assert body["result"] == 1, body
    ok_child = script.replace('"1") == "1"', '"1") == "0"')
    assert expect_ok(server.execute(ok_child))["result"] == 0
    check_healthy(server)


def test_a_forged_done_ends_only_the_scripts_own_run(server):
    """The script's process holds the pipe on which the runner tells the init that the frame is
    written (below the result channel, at the top of the descriptors). Saying it early only
    ends the run without a frame: the answer is an error, at once, and the next run is whole."""
    script = '''
import os, resource, time
def main():
    os.write(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 2, b"D")
    time.sleep(20)
    return "not stopped"
'''
    body = expect_script_error(server.execute(script, timeout=30), "exception")
    assert "before main() returned" in body["message"], body
    expect_result(server.execute("def main():\n    return 'next'\n"), "next")
    check_healthy(server)


# X is older than Y, its child, so the init's kill(-1) reaches X first; X notes in output/z/ the
# moment it sees Y stopped or killed. Running then, X got past the init's end of the jail: its
# siblings wake each other (SIGCONT) in a loop, which undoes a stop that did not reach them all
# at once. output/a/ makes the init's walk take a while before it lists output/z/.
OUTLIVES_THE_END = r'''
import os, signal, time
def wake(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
def looper(pids_r):
    pids = [int(p) for p in os.read(pids_r, 512).split()]
    while True:
        wake(pids)
def watcher(pids_r):
    y = os.fork()
    if y == 0:
        while True:
            signal.pause()
    pids = [int(p) for p in os.read(pids_r, 512).split()]
    z = os.open("output/z", os.O_RDONLY | os.O_DIRECTORY)
    while True:
        wake(pids)
        seen = os.waitid(os.P_PID, y, os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if seen is not None:
            os.close(os.open("after-the-end", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=z))
def main():
    os.makedirs("output/a")
    os.makedirs("output/z")
    for i in range(50):
        with open(f"output/a/{i:02}", "wb") as f:
            f.write(os.urandom(100_000))
    pids_r, pids_w = os.pipe()
    kids = []
    for i in range(8):
        pid = os.fork()
        if pid == 0:
            os.close(pids_w)
            (watcher if i == 7 else looper)(pids_r)
        kids.append(pid)
    os.write(pids_w, " ".join(map(str, kids)).encode().ljust(512) * 8)
    time.sleep(0.5)
    return "done"
'''


def test_no_process_of_a_run_runs_once_the_init_ends_it(server):
    """Once the script's process has written its frame, the jail's other processes are ended
    before output/ is read and the answer leaves: a stop that siblings can undo for each other
    (SIGCONT) is no end, and what outlived it would write under output/ during the walk and
    run on after the answer."""
    for _ in range(4):  # the stop is undone in most runs, not all
        resp = server.execute(OUTLIVES_THE_END, timeout=20)
        assert resp.status == 200, resp
        body = resp.json()
        assert body["result"] == "done", body["result"]
        paths = [f["path"] for f in body["files"]]
        assert "z/after-the-end" not in paths, paths
        assert len([p for p in paths if p.startswith("a/")]) == 50, paths
    check_healthy(server)


LEAVES_CHILDREN = """
import os, time
def main():
    for n in range(PROCS):
        try:
            pid = os.fork()
        except OSError as e:
            return f"fork {n} failed: {e.strerror}"
        if pid == 0:
            time.sleep(60)
            os._exit(0)
    return "forked"
"""


def test_a_busy_run_does_not_keep_ended_runs_processes(server_factory):
    """A run's processes are ended before its answer and reaped after it, by its init. Reaping
    at the lowest priority (SCHED_IDLE) while a run kept every CPU busy, the inits of ended runs
    got no CPU: their killed processes piled up and took the process quota all runs share (the
    zygote's user namespace), so that a later run could no longer fork."""
    procs = 12
    srv = server_factory(fresh=True, PYEXEC_MAX_PROCS=str(procs))
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        busy = ex.submit(srv.execute, busy_script(20, procs - 2), 30)
        time.sleep(1)
        for i in range(30):
            if busy.done():
                break
            script = LEAVES_CHILDREN.replace("PROCS", str(procs - 4))
            assert expect_ok(srv.execute(script, timeout=20))["result"] == "forked", i
        assert expect_ok(busy.result())["result"] == "busy"
    check_healthy(srv)



# Every child renames itself (its comm) with a counter as it loops: a comm that still changes
# after the answer is user code of the run still running. The script first tries to put its
# init at the lowest priority (SCHED_IDLE), which the kernel lets any process of its uid do,
# so that the busy children outrun it.
OUTLIVES_ANSWER = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def main():
    try:
        os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))
        said = "lowered"
    except OSError:
        said = "refused"
    for _ in range(PROCS):
        if os.fork() == 0:
            n = 0
            while True:
                n += 1
                if n % 1000 == 0:
                    libc.prctl(15, b"TAG%d" % (n // 1000 % 1000000), 0, 0, 0)
    return said
"""


def _comms_with(prefix):
    found = {}
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith(prefix):
            found[pid] = comm
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="reads every process's comm: needs root")
def test_no_user_code_runs_after_the_answer(server_factory):
    """Once a run is answered, its processes do not run the script's code on: the server no
    longer counts the run, so what ran on would run beside later runs, beyond the limits.
    With no output/, the init reports before it kills the jail; with the init put at
    the lowest priority by the script, busy children kept it from the kill (and from its end
    when the supervisor killed it) for most of a second after the answer."""
    procs = 12
    srv = server_factory(fresh=True, PYEXEC_MAX_PROCS=str(procs + 4))
    # Whether the init is preempted between its report and its kill (when the server's thread
    # wakes on its CPU) is chance: a few runs.
    for attempt in range(3):
        tag = "lg" + uuid.uuid4().hex[:4]
        script = OUTLIVES_ANSWER.replace("PROCS", str(procs)).replace("TAG", tag)
        said = expect_ok(srv.execute(script, timeout=20))["result"]
        answered = time.monotonic()
        assert said in ("lowered", "refused")
        # Even at the normal priority the server may take the init's CPU between its report
        # and its kill: what ran in that moment is not counted, what runs a fifth of a second
        # after the answer is.
        seen, ran = {}, {}
        while time.monotonic() < answered + 1:
            for pid, comm in _comms_with(tag).items():
                if seen.setdefault(pid, comm) != comm:
                    seen[pid] = comm
                    if time.monotonic() > answered + 0.2:
                        ran[pid] = round(time.monotonic() - answered, 3)
            time.sleep(0.01)
        assert not ran, (attempt, said, ran)
    check_healthy(srv)


INIT_BINARY = """
import os, subprocess
def main():
    path = "/pyexec/pyexec-init"
    if not os.path.exists(path):
        return {"present": False}
    try:
        with open(path, "r+b") as f:
            f.write(b"x")
        written = "yes"
    except OSError as exc:
        written = exc.strerror
    run = subprocess.run([path, "0", "1,1", "1,1,1,1", "1"], capture_output=True, timeout=5)
    return {"present": True, "written": written, "exit": run.returncode,
            "said": run.stderr.decode(errors="replace")[:200]}
"""


def test_the_bound_init_binary_gives_a_script_nothing(server):
    """Tier full's zygote binds pyexec-init (its runs' PID 1) into its jail, so a run sees it:
    read-only, and run by the script it is an unprivileged program that finds no seccomp program
    on descriptor 0 and leaves. The restricted tier binds nothing of the kind."""
    got = expect_ok(server.execute(INIT_BINARY))["result"]
    if not got["present"]:
        assert local_tier() == "restricted", got
        return
    assert got["written"] in ("Read-only file system", "Permission denied"), got
    assert got["exit"] == 2 and "usage" in got["said"], got
    check_healthy(server)
