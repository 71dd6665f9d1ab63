"""Restricted tier: nothing of a run outlives it, reaches a later run of the same uid, or makes
other runs pay for its clean-up. Each case starts servers of its own on this host.

Three hosts are stood in for: this one (Landlock, the server may mount a tmpfs per run); Docker's
default profile (the server may not mount: run directories are plain directories); and gVisor
(no Landlock either: runs can write the shared directories, which are swept instead).
"""

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from pyexec_testlib import expect_ok, expect_result
from test_isolation import DOCKER_LIKE_POLICY, local_only, outer_jail
from test_pool import metrics

# As Docker's default profile, and no Landlock either (gVisor has none).
NO_LANDLOCK_POLICY = DOCKER_LIKE_POLICY.replace(
    "ERRNO(38) { clone3 }", "ERRNO(38) { clone3, landlock_create_ruleset }")


def restricted(server_factory, prefix=(), **env):
    local_only()
    env.setdefault("PYEXEC_ISOLATION", "restricted")
    return server_factory(fresh=True, prefix=prefix, **env)


def live_tasks(uid):
    """Every task on the host (threads too) running as uid that is not a zombie."""
    found = []
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*"):
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in "ZX":
            found.append(f"{task}: {fields['Name'].strip()} {fields['State'].strip()}")
    return found


def wait_clean(srv, seconds=60, gone=()):
    """Waits for the restricted tier's cleaner to finish what is queued, and for the paths in
    gone to go: a run's uid reaches the cleaner only once its nsjail is reaped, which may come
    a moment after the answer, so an idle cleaner alone does not mean its files are gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (metrics(srv)["pyexec_run_uids_cleaning"]
                                           or any(os.path.lexists(p) for p in gone)):
        time.sleep(0.05)
    assert metrics(srv)["pyexec_run_uids_cleaning"] == 0


# Every kind of process that a scan of /proc could miss: a thread whose leader exited alone
# (the leader reads as a zombie), setsid and a double fork, a stopped process, a non-dumpable
# one (its /proc directory belongs to root), each in a session of its own.
LEFTOVERS = '''
import ctypes, os, signal, threading, time
libc = ctypes.CDLL(None)

def forever():
    while True:
        time.sleep(0.01)

def detached(then):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            then()
        os._exit(0)
    os.wait()

def thread_under_exited_leader():
    threading.Thread(target=forever).start()
    time.sleep(0.05)
    libc.syscall(60, 0)  # SYS_exit: the leader alone, not the thread group

def not_dumpable():
    libc.prctl(4, 0, 0, 0, 0)
    forever()

def stopped():
    os.kill(os.getpid(), signal.SIGSTOP)
    forever()

def main():
    for then in (thread_under_exited_leader, not_dumpable, stopped):
        detached(then)
    time.sleep(0.3)
    return os.getuid()
'''


def test_every_leftover_is_gone_before_the_answer(server_factory):
    srv = restricted(server_factory, PYEXEC_POOL="0")
    uid = expect_ok(srv.execute(LEFTOVERS, timeout=5))["result"]
    assert live_tasks(uid) == []


def test_leftovers_are_gone_after_a_timeout_too(server_factory):
    srv = restricted(server_factory, PYEXEC_POOL="0")
    script = LEFTOVERS.replace("    return os.getuid()", "    print(os.getuid(), flush=True)\n"
                               "    forever()")
    resp = srv.execute(script, timeout=1)
    assert resp.status == 422 and resp.json()["error"] == "timeout", resp
    assert live_tasks(int(resp.json()["stdout"])) == []


def test_a_leftover_cannot_reach_a_later_run_of_its_uid(server_factory):
    """Two uids only, so the attacker's comes back at once: whatever it tried to leave behind
    (a thread under an exited leader that patches later runs' files and memory) is gone."""
    srv = restricted(server_factory, PYEXEC_POOL="0", PYEXEC_RUN_UIDS="2",
                     PYEXEC_CONCURRENCY="1")
    marker = uuid.uuid4().hex
    attacker = LEFTOVERS.replace("def main():", f'''
def hijack():
    me = os.getuid()
    while True:
        for pid in os.listdir("/proc"):
            try:
                if os.stat(f"/proc/{{pid}}").st_uid != me or int(pid) == os.getpid():
                    continue
                cwd = os.readlink(f"/proc/{{pid}}/cwd")
                open(os.path.join(cwd, "secret.txt"), "w").write("HIJACKED {marker}")
                with open(f"/proc/{{pid}}/mem", "r+b"):
                    open(os.path.join(cwd, "mem.txt"), "w").write("{marker}")
            except (OSError, ValueError):
                pass
        time.sleep(0.001)

def main():
    for _ in range(2):
        detached(lambda: (threading.Thread(target=hijack).start(),
                          thread_under_exited_leader()))''', 1)
    victim = '''
import os, time
def main():
    open("secret.txt", "w").write("genuine")
    time.sleep(0.3)
    return [os.getuid(), open("secret.txt").read(), os.path.exists("mem.txt")]
'''
    bad = expect_ok(srv.execute(attacker, timeout=5))["result"]
    reused = 0
    for _ in range(4):
        uid, secret, mem = expect_ok(srv.execute(victim, timeout=5))["result"]
        reused += uid == bad
        assert (secret, mem) == ("genuine", False)
    assert reused >= 1, "the attacker's uid never came back: the test proves nothing"
    assert live_tasks(bad) == []


def test_runs_write_only_their_own_directory(server_factory):
    """With Landlock the shared writable directories and the run's own /proc files (its
    oom_score_adj, which the server could not pin without CAP_SYS_RESOURCE) are closed; the
    run's working directory is not."""
    srv = restricted(server_factory)
    script = '''
import os
def main():
    refused = []
    for path in ("/tmp/x", "/var/tmp/x", "/dev/shm/x", "/proc/self/oom_score_adj"):
        try:
            with open(path, "w") as f:
                f.write("0")
        except PermissionError:
            refused.append(path)
    with open("mine.txt", "w") as f:
        f.write("ok")
    with open("/dev/null", "w") as f:
        f.write("ok")
    return [refused, open("mine.txt").read(), open("/proc/self/oom_score_adj").read().strip()]
'''
    expect_result(srv.execute(script), [["/tmp/x", "/var/tmp/x", "/dev/shm/x",
                                         "/proc/self/oom_score_adj"], "ok", "1000"])


def test_the_runs_memory_is_closed_to_its_own_uid(server_factory):
    """The script's process and nsjail are not dumpable: another process of the same uid (a
    child here, a leftover in an attack) cannot open their /proc/<pid>/mem."""
    srv = restricted(server_factory)
    script = '''
import os
def main():
    targets = {"script": os.getpid(), "nsjail": os.getppid()}
    r, w = os.pipe()
    if os.fork() == 0:
        opened = []
        for name, pid in targets.items():
            try:
                open(f"/proc/{pid}/mem", "rb").close()
                opened.append(name)
            except PermissionError:
                pass
        os.write(w, repr(opened).encode())
        os._exit(0)
    os.wait()
    return [os.read(r, 100).decode(), open(f"/proc/{os.getppid()}/status").read().count("Name:")]
'''
    expect_result(srv.execute(script), ["[]", 1])


# Files in the run's temporary directory (its own directory in the restricted tier, /tmp in
# tier full) until one is refused: [fewer than 300 made, the error, the directory].
FILL_INODES = '''
import errno, os, tempfile
def main():
    tmp, made = tempfile.gettempdir(), 0
    try:
        for i in range(5000):
            open(os.path.join(tmp, f"f{i}"), "w").close()
            made += 1
    except OSError as e:
        return [made < 300, errno.errorcode[e.errno], tmp]
    return [made, None, tmp]
'''


def test_files_past_the_cap_fail_cleanly_and_leave_nothing(server_factory):
    srv = restricted(server_factory, PYEXEC_TMP_FILES="300", PYEXEC_HEALTH_DETAILS="on")
    assert srv.get("/healthz").json()["limits"] == \
        "rlimits and a capped tmpfs per run (restricted tier)"
    less, code, workdir = expect_ok(srv.execute(FILL_INODES))["result"]
    assert (less, code) == (True, "ENOSPC")
    wait_clean(srv, gone=[workdir])
    assert not os.path.lexists(workdir)
    expect_result(srv.execute("def main():\n    return 1\n"), 1)


WIDE_TREE = '''
import os
def main():
    top = os.getcwd()
    for _ in range(16):
        os.mkdir("d")
        os.chdir("d")
    for i in range(3000):
        os.mkdir(f"w{i}")
        open(f"w{i}/f", "w").close()
    os.chdir(top)
    os.makedirs("locked/inner")
    os.chmod("locked/inner", 0)
    os.chmod("locked", 0)
    os.symlink(TARGET, "link")
    return top
'''


def test_a_deep_wide_tree_is_removed_without_a_mount(server_factory, tmp_path):
    """Where the server may not mount (Docker's default profile), the run's directory is a
    plain one: a tree of any depth and width goes, links are not followed."""
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("server data")
    srv = restricted(server_factory, prefix=outer_jail(tmp_path, DOCKER_LIKE_POLICY, "docker"),
                     PYEXEC_HEALTH_DETAILS="on",
                     # A tmpfs: on a loaded disk file system the 6000 creates take many seconds.
                     PYEXEC_WORK_DIR=f"/dev/shm/pyexec-{uuid.uuid4().hex[:8]}")
    assert srv.get("/healthz").json()["limits"] == "rlimits only (restricted tier)"
    script = WIDE_TREE.replace("TARGET", repr(str(target)))
    workdir = expect_ok(srv.execute(script, timeout=20))["result"]
    wait_clean(srv, gone=[workdir])
    assert not os.path.lexists(workdir)
    assert list(Path(workdir).parent.glob(".pyexec-gone-*")) == []
    assert (target / "keep.txt").read_text() == "server data"
    assert metrics(srv)["pyexec_run_uids_quarantined"] == 0


# Seconds of removal for the cleaner.
HUNDRED_THOUSAND_FILES = '''
import os
def main():
    for d in range(100):
        os.mkdir(f"d{d}")
        for f in range(1000):
            os.close(os.open(f"d{d}/{f}", os.O_CREAT | os.O_WRONLY))
    return os.getcwd()
'''


def test_a_big_clean_up_does_not_hold_other_answers(server_factory, tmp_path):
    """100 000 files take seconds to remove: the cleaner does it after the answer, and other
    runs are answered meanwhile. With two uids, one of them being cleaned, a second run at the
    same time finds none free: 429 busy, never a 500."""
    if os.environ.get("PYEXEC_TEST_ISOLATION") != "restricted":
        pytest.skip("runs once per make test, in the restricted tier's pass")
    srv = restricted(server_factory, prefix=outer_jail(tmp_path, DOCKER_LIKE_POLICY, "docker"),
                     PYEXEC_MAX_TIMEOUT="60", PYEXEC_RUN_UIDS="2", PYEXEC_POOL="0",
                     # A tmpfs: on a disk file system the 100 000 creates alone take a minute.
                     PYEXEC_WORK_DIR=f"/dev/shm/pyexec-{uuid.uuid4().hex[:8]}")
    workdir = expect_ok(srv.execute(HUNDRED_THOUSAND_FILES, timeout=60))["result"]
    answers = []

    def trivial():
        answers.append(srv.execute("import time\ndef main():\n    time.sleep(0.5)\n"
                                   "    return 1\n"))

    threads = [threading.Thread(target=trivial) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Answered while the big one was still being removed: nothing waited for it.
    assert metrics(srv)["pyexec_run_uids_cleaning"] >= 1
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 429], answers
    busy = [a for a in answers if a.status == 429][0]
    assert busy.json()["error"] == "busy" and busy.header("Retry-After") == "1", busy
    wait_clean(srv, seconds=120, gone=[workdir])
    assert not os.path.lexists(workdir)


def test_without_landlock_shared_directories_are_swept(server_factory, tmp_path):
    """gVisor has no Landlock: a run can write /tmp and /dev/shm there, and all it left is
    gone after it, however deep, without following its links."""
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("server data")
    os.chmod(target, 0o777)
    srv = restricted(server_factory,
                     prefix=outer_jail(tmp_path, NO_LANDLOCK_POLICY, "gvisor-like"))
    marker = uuid.uuid4().hex
    script = f'''
import os
def main():
    os.symlink({str(target / "keep.txt")!r}, "/tmp/{marker}-link")
    for top in ("/tmp/{marker}-deep", "/dev/shm/{marker}-deep"):
        os.makedirs(top)
        os.chdir(top)
        for _ in range(40):
            os.mkdir("d")
            os.chdir("d")
        open("f", "w").write("x")
    return os.getcwd()
'''
    expect_ok(srv.execute(script))
    wait_clean(srv, gone=[f"/tmp/{marker}-link", f"/tmp/{marker}-deep",
                          f"/dev/shm/{marker}-deep"])
    left = [p for p in (f"/tmp/{marker}-link", f"/tmp/{marker}-deep", f"/dev/shm/{marker}-deep")
            if os.path.lexists(p)]
    left += [str(p) for d in (Path("/tmp"), Path("/dev/shm")) for p in d.glob(".pyexec-gone-*")]
    assert left == []
    assert (target / "keep.txt").read_text() == "server data"


def test_concurrent_runs_each_get_a_uid_and_all_are_cleaned(server_factory):
    srv = restricted(server_factory, PYEXEC_CONCURRENCY="2", PYEXEC_RUN_UIDS="8",
                     PYEXEC_POOL="0")
    results = []

    def one():
        results.append(expect_ok(srv.execute(LEFTOVERS, timeout=5))["result"])

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    wait_clean(srv)
    for uid in set(results):
        assert live_tasks(uid) == []
    assert metrics(srv)["pyexec_run_uids_quarantined"] == 0


def test_tier_full_caps_files_too(server_factory):
    """PYEXEC_TMP_FILES holds in tier full as well: its /tmp is a tmpfs with that many inodes."""
    local_only()
    srv = server_factory(PYEXEC_ISOLATION="full", PYEXEC_TMP_FILES="300")
    less, code, _ = expect_ok(srv.execute(FILL_INODES))["result"]
    assert (less, code) == (True, "ENOSPC")


def test_one_huge_clean_up_holds_back_no_other_uid(server_factory):
    """Three uids: one held while a run's 100 000 files are removed in the slow lane; trivial
    runs one after another keep cycling the other two, freed by the fast lane meanwhile."""
    if os.environ.get("PYEXEC_TEST_ISOLATION") != "restricted":
        pytest.skip("runs once per make test, in the restricted tier's pass")
    srv = restricted(server_factory, PYEXEC_MAX_TIMEOUT="60", PYEXEC_RUN_UIDS="3",
                     PYEXEC_POOL="0", PYEXEC_CONCURRENCY="1",
                     PYEXEC_WORK_DIR=f"/dev/shm/pyexec-{uuid.uuid4().hex[:8]}",
                     prefix=outer_jail(Path(os.environ.get("TMPDIR", "/tmp")),
                                       DOCKER_LIKE_POLICY, f"docker-{uuid.uuid4().hex[:8]}"))
    workdir = expect_ok(srv.execute(HUNDRED_THOUSAND_FILES, timeout=60))["result"]
    for _ in range(6):
        # A uid may still be in the fast lane for a moment: busy then, never for long.
        for _ in range(20):
            resp = srv.execute("def main():\n    return 1\n")
            if resp.status != 429:
                break
            time.sleep(0.1)
        expect_result(resp, 1)
    # All six answered while the big clean-up went on: it held back none of them.
    assert os.path.lexists(workdir), "removed already: the test proves nothing"
    wait_clean(srv, seconds=120, gone=[workdir])
    assert not os.path.lexists(workdir)
