"""Isolation tiers: the start-up self-check, failing closed, and what the restricted tier
(no namespaces) guarantees instead. docs/security.md has the tier table these tests follow.

A host that forbids namespaces is emulated with real nsjail and the real kernel: pyexecd runs
under an outer nsjail whose seccomp policy refuses namespace creation, mount and pivot_root, as
Docker's default profile does. tests/platforms/run.sh repeats this under Docker and gVisor."""

import concurrent.futures
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from pyexec_testlib import (CANARY_VALUE, expect_error, expect_ok, expect_result, external_url,
                            next_run_uid, nsjail_path)
from conftest import host_landlock_abi
from test_attacks import _host_pids_with
from test_faults import OK, UnhealthyServer

NAMESPACE_PROBES = ["userNamespace", "pidNamespace", "mountNamespace", "networkNamespace",
                    "ipcNamespace", "utsNamespace", "cgroupNamespace", "procMount"]

# What Docker's default seccomp profile refuses a container without CAP_SYS_ADMIN, in kafel.
DOCKER_LIKE_POLICY = """
#define CLONE_NEW_ANY 0x7E020080
POLICY docker_like {
  ERRNO(1) { unshare, setns, mount, umount, pivot_root, clone { (clone_flags & CLONE_NEW_ANY) != 0 } },
  ERRNO(38) { clone3 }
}
USE docker_like DEFAULT ALLOW
"""


def local_only():
    if external_url():
        pytest.skip("needs this host's file system or starts servers of its own")


def outer_jail(tmp_path, policy, name):
    """A command prefix that runs pyexecd under a seccomp policy of the host's kind (kafel
    text), in an nsjail with no namespaces: Docker's default profile, or gVisor's lack of
    Landlock."""
    path = tmp_path / f"{name}.kafel"
    path.write_text(policy)
    return (nsjail_path(), "--mode=o", "--quiet", "--time_limit=0", "--keep_env",
            "--keep_caps", "--forward_signals", "--disable_rlimits", "--disable_clone_newuser",
            "--disable_clone_newns", "--disable_clone_newpid", "--disable_clone_newnet",
            "--disable_clone_newipc", "--disable_clone_newuts", "--disable_clone_newcgroup",
            f"--seccomp_policy={path}", "--")


@pytest.fixture
def no_namespaces(tmp_path):
    """A command prefix that runs pyexecd where namespaces are refused."""
    local_only()
    return outer_jail(tmp_path, DOCKER_LIKE_POLICY, "docker-like")


@pytest.fixture
def unhealthy(tmp_path):
    """Starts servers that may have no working sandbox; each must still stop cleanly."""
    local_only()
    started = []

    def start(prefix=(), **env):
        srv = UnhealthyServer("isolation", env, tmp_path, prefix=prefix)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
        # Under the outer nsjail the exit status is nsjail's; the log shows pyexecd's stop.
        assert "stopping (0 runs had to be stopped)" in srv.log_path.read_text(), \
            srv.log_tail()


def isolation(srv):
    return srv.get("/healthz").json()["isolation"]


DETAILS = {"PYEXEC_HEALTH_DETAILS": "1"}


# --- the self-check -------------------------------------------------------------------

def test_healthz_tells_the_public_only_status_tier_and_readiness(server, tier):
    health = server.get("/healthz")
    body = health.json()
    if external_url() and "isolation" in body:
        pytest.skip("the external server runs with PYEXEC_HEALTH_DETAILS=1 (tests/image does)")
    assert health.status == 200 and body["status"] == "ok", health
    assert body["tier"] == tier and isinstance(body["poolReady"], int), body
    assert set(body) == {"status", "tier", "poolReady"}, body
    for secret in ("Linux", "gVisor", "kernel", "Namespace", "seccomp", "cgroup"):
        assert secret not in health.body.decode(), health


def test_start_up_log_has_the_host_details(server_factory):
    local_only()
    srv = server_factory()
    entry = next(json.loads(ln) for ln in srv.log_path.read_text().splitlines()
                 if '"isolation"' in ln)
    iso = entry["isolation"]
    assert iso["kernel"].startswith(("Linux ", "gVisor (Linux ")), iso
    assert set(iso["host"]) == set(NAMESPACE_PROBES) | {"setuid", "seccomp"}, iso
    assert "rlimits" in iso["limits"], iso


def test_healthz_reports_the_tier_and_what_the_host_allows(server_factory, tier):
    local_only()  # an external server shows these only if its operator set PYEXEC_HEALTH_DETAILS
    iso = isolation(server_factory(**DETAILS))
    assert iso["tier"] == tier, iso
    assert iso["kernel"].startswith(("Linux ", "gVisor (Linux ")), iso
    assert set(iso["host"]) == set(NAMESPACE_PROBES) | {"setuid", "seccomp"}, iso
    assert all(isinstance(v, bool) for v in iso["host"].values()), iso
    assert iso["host"]["setuid"] and iso["host"]["seccomp"], iso
    if tier == "full":
        assert all(iso["host"][p] for p in NAMESPACE_PROBES), iso


def test_self_check_is_one_json_log_line(server_factory):
    local_only()
    srv = server_factory(fresh=True)
    lines = [ln for ln in srv.log_path.read_text().splitlines() if '"isolation"' in ln]
    assert len(lines) == 1, lines
    import json
    entry = json.loads(lines[0])
    assert entry["isolation"]["tier"] == srv.get("/healthz").json()["tier"], entry


def test_full_refuses_where_namespaces_are_denied(unhealthy, no_namespaces):
    srv = unhealthy(prefix=no_namespaces, PYEXEC_ISOLATION="full",
                    PYEXEC_RUN_UID=str(next_run_uid()), **DETAILS)
    health = srv.get("/healthz")
    assert health.status == 503, health
    iso = health.json()["isolation"]
    assert iso["tier"] is None and iso["requested"] == "full", iso
    assert not any(iso["host"][p] for p in NAMESPACE_PROBES), iso
    body = expect_error(srv.execute(OK), 500, "internal")
    message = body["message"]
    # names what is missing, and both ways out
    for needed in ("userNamespace", "mountNamespace", "--cap-add SYS_ADMIN",
                   "seccomp=unconfined", "PYEXEC_ISOLATION=auto"):
        assert needed in message, message
    assert health.json()["message"] == message
    assert '"POST /execute 200' not in srv.log_path.read_text()


def test_unhealthy_healthz_keeps_host_details_to_the_log(unhealthy, no_namespaces):
    srv = unhealthy(prefix=no_namespaces, PYEXEC_ISOLATION="full",
                    PYEXEC_RUN_UID=str(next_run_uid()))
    health = srv.get("/healthz")
    body = health.json()
    assert health.status == 503 and body["status"] == "unavailable", health
    assert body["tier"] is None and set(body) == {"status", "tier", "poolReady", "message"}, body
    assert "log" in body["message"], body
    for secret in ("Namespace", "seccomp", "SYS_ADMIN", "refuses"):
        assert secret not in body["message"], body
    assert "userNamespace" in srv.log_path.read_text()


def test_auto_takes_restricted_where_namespaces_are_denied(unhealthy, no_namespaces):
    srv = unhealthy(prefix=no_namespaces, PYEXEC_ISOLATION="auto",
                    PYEXEC_RUN_UID=str(next_run_uid()), **DETAILS)
    health = srv.get("/healthz")
    assert health.status == 200, health
    assert health.json()["isolation"]["tier"] == "restricted", health
    assert health.json()["limits"] == "rlimits only (restricted tier)", health
    got = expect_ok(srv.execute(RESTRICTED_FACTS))["result"]
    assert got["uid"] != 0 and got["seccomp"] and got["inet"] == 97, got


def test_auto_takes_full_where_it_works(server_factory):
    local_only()
    srv = server_factory(PYEXEC_ISOLATION="auto")
    assert srv.get("/healthz").json()["tier"] == "full"
    assert expect_ok(srv.execute("import os\ndef main():\n    return os.getuid()\n"))[
        "result"] == 65534


def test_bad_isolation_setting_is_refused(server_factory):
    local_only()
    import subprocess
    from pyexec_testlib import binary_path
    out = subprocess.run([str(binary_path()), "--isolation", "none"], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 2, out
    assert "PYEXEC_ISOLATION must be full, restricted or auto" in out.stderr, out


def test_run_uids_in_use_by_another_server(unhealthy):
    base = str(next_run_uid())
    first = unhealthy(PYEXEC_ISOLATION="restricted", PYEXEC_RUN_UID=base)
    assert first.get("/healthz").status == 200
    second = unhealthy(PYEXEC_ISOLATION="restricted", PYEXEC_RUN_UID=base)
    assert second.get("/healthz").status == 503
    body = expect_error(second.execute(OK), 500, "internal")
    assert "the server log says which" in body["message"], body
    assert "in use by another pyexecd" in second.log_path.read_text()
    expect_result(first.execute(OK), 42)


# --- the restricted tier ----------------------------------------------------------------

RESTRICTED_FACTS = '''
import os, socket
def main():
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        inet = 0
    except OSError as e:
        inet = e.errno
    with open("/proc/self/status") as f:
        seccomp = "Seccomp:\\t2" in f.read()
    return {"uid": os.getuid(), "seccomp": seccomp, "inet": inet}
'''


def test_restricted_runs_under_nsjail(restricted_server):
    """The script's process tree is nsjail -> the runner's init -> the script."""
    script = '''
import os
def ppid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("PPid:")).split()[1])
def main():
    init = ppid(os.getpid())
    jail = ppid(init)
    with open(f"/proc/{jail}/cmdline", "rb") as f:
        argv0 = f.read().split(b"\\0")[0].decode()
    return [os.path.basename(argv0), os.getpid() != init]
'''
    expect_result(restricted_server.execute(script), ["nsjail", True])


def test_restricted_nsjail_itself_is_filtered(restricted_server):
    """nsjail runs as the run's uid here, so the script could take it over through
    /proc/<pid>/mem: the server's own filter and no_new_privs are on nsjail before it starts,
    so what nsjail may do is no more than what the script may."""
    script = '''
import os
def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(l.split(":", 1) for l in f if ":" in l)
def main():
    init = int(status("self")["PPid"])
    jail = int(status(init)["PPid"])
    s = status(jail)
    return [s["Seccomp"].strip(), s.get("NoNewPrivs", " 1").strip()]
'''
    expect_result(restricted_server.execute(script), ["2", "1"])


def test_restricted_run_that_kills_everything_it_can_is_still_cleaned_up(server_factory):
    """A process of the run that keeps calling kill(-1, SIGKILL) and forking does not stop
    the clean-up (which kills from the server, not from a helper of the run's uid), and the
    server keeps answering."""
    local_only()
    srv = server_factory(PYEXEC_ISOLATION="restricted")
    marker = f"pyexec-killer-{uuid.uuid4().hex}"
    script = f'''
import os, subprocess, sys
LOOP = "import os, signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" \\
       "end = time.time() + 20\\nwhile time.time() < end:\\n" \\
       "    os.kill(-1, 9) if os.fork() else os._exit(0)\\n"
def main():
    subprocess.Popen([sys.executable, "-c", LOOP, {marker!r}], start_new_session=True)
    time.sleep(5)  # the looper kills this process, its init and nsjail long before
'''
    for _ in range(3):
        resp = srv.execute(script.replace("import os,", "import time, os,"), timeout=10)
        # the run ends when its own looper kills it: an error, never a result
        assert resp.status == 422 and resp.elapsed < 5, resp
    deadline = time.monotonic() + 5
    while _host_pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _host_pids_with(marker) == [], "a process of an earlier run survived its clean-up"
    expect_result(srv.execute(OK), 42)
    assert "could not be removed" not in srv.log_path.read_text()


def test_restricted_limits_set_before_exec(restricted_server):
    script = '''
import resource as r
def main():
    names = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
             "RLIMIT_CORE"]
    return {n: list(r.getrlimit(getattr(r, n))) for n in names}
'''
    got = expect_ok(restricted_server.execute(script))["result"]
    env = restricted_server.env
    mib = 1 << 20
    assert got["RLIMIT_AS"] == [int(env.get("PYEXEC_MEMORY_MB", 512)) * mib] * 2, got
    assert got["RLIMIT_FSIZE"] == [int(env.get("PYEXEC_TMP_MB", 64)) * mib] * 2, got
    assert got["RLIMIT_NOFILE"] == [int(env.get("PYEXEC_MAX_FILES", 256))] * 2, got
    assert got["RLIMIT_NPROC"] == [int(env.get("PYEXEC_MAX_PROCS", 32))] * 2, got
    assert got["RLIMIT_CORE"] == [0, 0], got
    cpu = got["RLIMIT_CPU"]
    assert cpu[0] == cpu[1] and 0 < cpu[0] < 3600, got


def test_restricted_environment_is_scrubbed(restricted_server):
    script = "import os\ndef main():\n    return dict(os.environ)\n"
    env = expect_ok(restricted_server.execute(script))["result"]
    assert set(env) == {"PATH", "LANG", "HOME", "TMPDIR", "OPENBLAS_NUM_THREADS",
                        "OMP_NUM_THREADS", "MKL_NUM_THREADS"}, env
    assert CANARY_VALUE not in repr(env)


def test_restricted_no_socket_but_unix(restricted_server):
    script = '''
import socket
def main():
    out = {}
    for name in ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"]:
        try:
            socket.socket(getattr(socket, name), socket.SOCK_DGRAM if name != "AF_PACKET" else socket.SOCK_RAW)
            out[name] = 0
        except OSError as e:
            out[name] = e.errno
    a, b = socket.socketpair()
    a.sendall(b"ok")
    out["unix"] = b.recv(2).decode()
    return out
'''
    expect_result(restricted_server.execute(script),
                  {"AF_INET": 97, "AF_INET6": 97, "AF_NETLINK": 97, "AF_PACKET": 97,
                   "unix": "ok"})


def test_restricted_memfd_refused(restricted_server):
    """Without a cgroup a memfd's memory would count against no limit of the run's: RLIMIT_AS
    counts only what is mapped. So memfd_create is refused there."""
    script = '''
import errno, os
def main():
    try:
        os.memfd_create("x")
        return "created"
    except OSError as e:
        return errno.errorcode[e.errno]
'''
    expect_result(restricted_server.execute(script), "EPERM")


def test_restricted_shared_directories_refused(restricted_server):
    """A run writes only its own directory: Landlock where the kernel has it, and in the image
    (pyexecd as PID 1) the shared directories lose their write bit for others."""
    if not external_url() and host_landlock_abi() == 0:
        pytest.skip("this host has no Landlock and the server is not a container's PID 1")
    script = '''
import os
def main():
    refused = []
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            with open(os.path.join(d, f"x{os.getpid()}"), "w") as f:
                f.write("x")
        except PermissionError:
            refused.append(d)
    with open("mine.txt", "w") as f:
        f.write("ok")
    return [refused, open("mine.txt").read()]
'''
    expect_result(restricted_server.execute(script), [["/tmp", "/var/tmp", "/dev/shm"], "ok"])


def test_restricted_nothing_made_writable_by_others(restricted_server):
    """Where Landlock is missing a concurrent run could write into what a run opened up to
    others, and race its clean-up: modes, umask and ACLs that would allow it are refused."""
    script = '''
import os
def main():
    os.mkdir("d")
    out = []
    for name, call in (("chmod", lambda: os.chmod("d", 0o777)),
                       ("chmod g+w", lambda: os.chmod("d", 0o770)),
                       ("umask", lambda: os.umask(0)),
                       ("xattr", lambda: os.setxattr("d", "user.x", b"1"))):
        try:
            call()
            out.append(name + " allowed")
        except PermissionError:
            out.append(name + " refused")
    os.chmod("d", 0o755)  # readable by others stays the run's own choice
    os.umask(0o022)
    return out
'''
    expect_result(restricted_server.execute(script),
                  ["chmod refused", "chmod g+w refused", "umask refused", "xattr refused"])


def test_restricted_no_ipc_objects_that_outlive_the_run(restricted_server):
    script = '''
import ctypes, multiprocessing
def main():
    libc = ctypes.CDLL(None, use_errno=True)
    shm = libc.shmget(0, 4096, 0o1600)
    shm_errno = ctypes.get_errno()
    try:  # a POSIX semaphore is a file in the host's /dev/shm, which runs may not write
        multiprocessing.Lock()
        sem = "created"
    except PermissionError:
        sem = "refused"
    return [shm, shm_errno, sem]
'''
    expect_result(restricted_server.execute(script), [-1, 1, "refused"])


def test_restricted_concurrent_runs_cannot_touch_each_other(server_factory):
    """Two runs at once get different uids: neither can signal the other, read its files,
    its environment or its memory map, or trace it."""
    local_only()
    srv = server_factory(PYEXEC_ISOLATION="restricted", PYEXEC_CONCURRENCY="2")
    marker = f"pyexec-victim-{uuid.uuid4().hex}"
    victim = f'''
import os, subprocess, sys, time
def main():
    with open("secret.txt", "w") as f:
        f.write("victim data")
    os.chmod(".", 0o755)  # even a directory opened up is behind its parent's 0700
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)", {marker!r}])
    time.sleep(6)
    child.kill()
    return os.getuid()
'''
    attacker = f'''
import ctypes, os, signal, time
MARK = {marker!r}.encode()
def find():
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                if MARK in f.read():
                    return int(pid)
        except OSError:
            pass
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return e.errno
def main():
    for _ in range(100):
        pid = find()
        if pid:
            break
        time.sleep(0.05)
    with open(f"/proc/{{pid}}/status") as f:
        uid = int(next(l for l in f if l.startswith("Uid:")).split()[1])
    libc = ctypes.CDLL(None, use_errno=True)
    return {{
        "uids": [os.getuid(), uid],
        "kill": attempt(lambda: os.kill(pid, signal.SIGKILL)),
        "environ": attempt(lambda: open(f"/proc/{{pid}}/environ").read()),
        "maps": attempt(lambda: open(f"/proc/{{pid}}/maps").read()),
        "cwd": attempt(lambda: os.listdir(f"/proc/{{pid}}/cwd")),
        "secret": attempt(lambda: open(os.readlink(f"/proc/{{pid}}/cwd") + "/secret.txt").read()),
        "ptrace": libc.ptrace(16, pid, 0, 0),  # PTRACE_ATTACH
    }}
'''
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        first = ex.submit(srv.execute, victim, 15)
        time.sleep(0.5)
        got = expect_ok(ex.submit(srv.execute, attacker, 10).result())["result"]
        victim_uid = expect_ok(first.result())["result"]
    mine, theirs = got["uids"]
    assert mine != theirs and theirs == victim_uid, got
    assert got["kill"] == 1 and got["environ"] == 13 and got["maps"] == 13, got
    assert got["cwd"] == 13 and got["secret"] in (1, 13), got
    assert got["ptrace"] == -1, got


def test_restricted_cannot_read_server_environment(restricted_server):
    """No process's environment but the run's own is readable: the server's (with its
    canary secrets) least of all."""
    local_only()
    script = '''
import os
def main():
    readable = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                data = f.read()
            st = os.stat(f"/proc/{pid}")
            if st.st_uid != os.getuid():
                readable.append(pid)
            if b"hunter2" in data:
                readable.append("canary in " + pid)
        except OSError:
            pass
    return readable
'''
    expect_result(restricted_server.execute(script), [])


def test_restricted_cleanup_removes_everything_and_follows_no_link(restricted_server, tmp_path):
    """After the run its directory, deep trees and unreadable directories in it are gone, and
    what its links pointed at is untouched. (Where runs may write the shared directories, what
    they leave there is swept too: test_leftovers.py.)"""
    local_only()
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("server data")
    os.chmod(target, 0o777)  # even a directory the run may write into stays
    script = f'''
import os
def main():
    os.symlink({str(target)!r}, "link-to-dir")
    os.symlink({str(target / "keep.txt")!r}, "link-to-file")
    top = os.environ["HOME"]
    os.chdir(top)
    for _ in range(40):
        os.mkdir("d")
        os.chdir("d")
    open("f", "w").write("x")
    os.chdir(top)
    os.makedirs("locked/inner")
    open("locked/inner/f", "w").write("x")
    os.chmod("locked/inner", 0)
    os.chmod("locked", 0)
    return os.getcwd()
'''
    workdir = expect_ok(restricted_server.execute(script))["result"]

    def left():
        moved = [str(p) for p in Path(workdir).parent.glob(".pyexec-gone-*")]
        return ([workdir] if os.path.lexists(workdir) else []) + moved

    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == []
    assert (target / "keep.txt").read_text() == "server data"


# --- the host's storage layout ---------------------------------------------------------------

MOUNT_TABLES = """
def main():
    out = {}
    for name in ("/proc/self/mountinfo", "/proc/self/mounts", "/proc/self/mountstats"):
        try:
            with open(name) as f:
                out[name] = f.read()
        except OSError as exc:
            out[name] = str(exc)
    return out
"""


def storage_paths_of_our_overlays():
    """The host directories named by the options of the overlays that / , /usr or /etc sit on
    here, as in a container; empty on a plain host."""
    paths = set()
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        sep = fields.index("-")
        if fields[4] not in ("/", "/usr", "/etc") or fields[sep + 1] != "overlay":
            continue
        for opt in fields[sep + 3].split(","):
            key, _, value = opt.partition("=")
            if key in ("lowerdir", "upperdir", "workdir"):
                paths.update(p for p in value.split(":") if p.startswith("/"))
    return paths


@pytest.mark.full_tier_only("without a mount namespace a script reads the server's own mount "
                            "table (docs/security.md, host storage paths)")
def test_mount_tables_do_not_show_the_hosts_storage_paths(unhealthy, tmp_path):
    """In a container, /usr and /etc are on an overlay whose options name the host's
    directories (lowerdir=/var/lib/docker/overlay2/...), and a bind mount shows its file
    system's options: no script may see those paths. In a container the test checks the real
    ones; on a plain host it emulates them with an overlay on /usr and /etc whose lower layer
    sits under a path of our own (in a container that would stack three overlays, past the
    kernel's limit of two)."""
    hidden = storage_paths_of_our_overlays()
    prefix = ()
    if not hidden:
        host = tmp_path / f"host-layer-{uuid.uuid4().hex[:8]}"
        for d in ("usr", "etc"):
            (host / d).mkdir(parents=True)
        hidden = {str(host)}
        script = ("mount --make-rprivate / && "
                  f"mount -t overlay overlay -o ro,lowerdir=/usr:{host}/usr /usr && "
                  f"mount -t overlay overlay -o ro,lowerdir=/etc:{host}/etc /etc && "
                  'exec "$@"')
        prefix = ("unshare", "-m", "sh", "-c", script, "sh")
    srv = unhealthy(prefix=prefix, PYEXEC_RUN_UID=str(next_run_uid()))
    tables = expect_ok(srv.execute(MOUNT_TABLES))["result"]
    assert "overlay" in tables["/proc/self/mountinfo"], tables  # an overlay is there to hide
    for name, text in tables.items():
        for path in hidden:
            assert path not in text, (name, path, text)
