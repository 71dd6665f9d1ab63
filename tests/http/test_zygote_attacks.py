"""A hostile customer against tier full's zygote (runner/zygote.py, src/zygote.c): what a run
can reach of the host, the zygote and other runs through what they share, and what the zygote
does when it stops answering. test_zygote.py has the first round; these are the attacks it
does not cover, each asserting the precise refusal."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pyexec_testlib import busy_script, expect_script_error, local_tier

from test_zygote import expect_result, process_table, zygote_pids, zygote_state

ZYGOTE_ONLY = pytest.mark.skipif(
    local_tier() == "restricted", reason="the restricted tier has no zygote: one-shot jails")


@pytest.fixture(scope="module")
def zserver(server_factory):
    srv = server_factory(PYEXEC_HEALTH_DETAILS="on")
    if local_tier() == "full":
        assert zygote_state(srv)["up"], zygote_state(srv)
    return srv


# --- Per-user kernel quotas ------------------------------------------------------------------
#
# nsjail creates each jail's user namespace as root, so the kernel charges what a jailed
# process holds of a per-user quota (inotify instances, queued signals, POSIX message-queue
# bytes) to root's count in the host's namespace too, against the host's per-user maximum.
# A run that takes its whole quota must leave the host's root (and so every other run and
# every root daemon of the host) its own.

HOLD_SECONDS = 4

HOLD = """
import ctypes, errno, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
def main():
    got = exhaust()
    time.sleep(%d)  # the host probes meanwhile
    return got
""" % HOLD_SECONDS

INOTIFY = HOLD + """
def exhaust():
    n = 0
    while libc.inotify_init1(0) >= 0:
        n += 1
    return [n, errno.errorcode[ctypes.get_errno()]]
"""

SIGQUEUE = HOLD + """
class sigval(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
def exhaust():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
    n = 0
    while libc.sigqueue(os.getpid(), signal.SIGRTMIN, sigval(1)) == 0:
        n += 1
    return [n, errno.errorcode[ctypes.get_errno()]]
"""

MQUEUE = HOLD + """
class attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
rt = ctypes.CDLL("librt.so.1", use_errno=True)
def exhaust():
    n = 0
    while rt.mq_open(b"/q%d" % n, os.O_CREAT | os.O_RDWR, 0o600,
                     ctypes.byref(attr(0, 10, 8192, 0))) >= 0:
        n += 1
    return [n, errno.errorcode[ctypes.get_errno()]]
"""

# Run on the host as root (the test's own user) while the run holds its quota: how often each
# call failed. Its queued signals go with it.
PROBE = r"""
import ctypes, errno, json, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
class sigval(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
class attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
name = b"/pyexec-test-probe-%d" % os.getpid()
failed = {}
def fail(what):
    failed[what] = errno.errorcode.get(ctypes.get_errno(), "?")
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    fd = libc.inotify_init1(0)
    if fd < 0:
        fail("inotify_init1")
    else:
        os.close(fd)
    if libc.sigqueue(os.getpid(), signal.SIGRTMIN, sigval(1)) != 0:
        fail("sigqueue")
    fd = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr(0, 10, 8192, 0)))
    if fd < 0:
        fail("mq_open")
    else:
        os.close(fd)
        rt.mq_unlink(name)
    time.sleep(0.02)
print(json.dumps(failed))
"""


def host_root_while(srv, script):
    """What failed for the host's root while srv ran script; and the run's answer."""
    assert os.geteuid() == 0, "the HTTP tests run as root"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(srv.execute, script, HOLD_SECONDS + 10)
        time.sleep(1.5)  # the run has taken its quota (a few ms), and holds it
        probe = subprocess.run([sys.executable, "-c", PROBE, str(HOLD_SECONDS - 2)],
                               capture_output=True, text=True, timeout=60)
        resp = fut.result()
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout), resp


def test_a_run_cannot_take_the_hosts_inotify_instances(zserver):
    failed, resp = host_root_while(zserver, INOTIFY)
    assert failed == {}, (failed, resp)
    # The run itself gets none (the full tier's policy denies them: each would count against
    # root's 128) or, in the restricted tier (a uid of its own), its uid's own 128.
    got = expect_result(resp)
    assert got in ([0, "EPERM"], [128, "EMFILE"]), got


def test_a_run_cannot_take_the_hosts_pending_signals(zserver, tier):
    failed, resp = host_root_while(zserver, SIGQUEUE)
    assert failed == {}, (failed, resp)
    n, err = expect_result(resp)
    # Tier full: the runner's RLIMIT_SIGPENDING; restricted: its own uid's whole quota.
    assert err == "EAGAIN" and 0 < n and (n <= 256 or tier == "restricted"), (n, err)


def test_a_run_cannot_take_the_hosts_message_queue_bytes(zserver):
    failed, resp = host_root_while(zserver, MQUEUE)
    assert failed == {}, (failed, resp)
    # Tier full: RLIMIT_MSGQUEUE 0, as config/nsjail.cfg means it; restricted: the policy.
    assert expect_result(resp) in ([0, "EMFILE"], [0, "EPERM"])


# --- What a fork inherits ------------------------------------------------------------------

INHERITED = r"""
import os
def main():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the listing's own descriptor
    shared = [l.split()[-1] for l in open("/proc/self/maps")
              if l.split()[1][3] == "s" and "w" in l.split()[1]]
    status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines()
                  if ":\t" in l)
    pid1 = dict(l.split(":\t", 1) for l in open("/proc/1/status").read().splitlines()
                if ":\t" in l)
    caps = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    return {"fds": fds, "shared_writable": shared,
            "caps": [status[c] for c in caps], "pid1_caps": [pid1[c] for c in caps],
            "nnp": [status["NoNewPrivs"], pid1["NoNewPrivs"]],
            "seccomp": [status["Seccomp"], pid1["Seccomp"]],
            "threads": [status["Threads"], pid1["Threads"]]}
"""


@ZYGOTE_ONLY
def test_a_fork_inherits_no_descriptor_mapping_thread_or_capability(zserver):
    got = expect_result(zserver.execute(INHERITED))
    # stdin, the output pipe (stdout and stderr), the result channel at the top and the pipe
    # that tells the init the frame is written below it: nothing of the zygote's (its control
    # socket, the filter's pipe, the handshake) nor the server's.
    fds = got["fds"]
    top = max(fds, key=int)
    done = str(int(top) - 1)
    assert sorted(fds) == sorted(["0", "1", "2", done, top]) and int(top) > 200, fds
    assert fds["0"] == "/dev/null" and fds["1"] == fds["2"] != fds[top] != fds[done], fds
    assert all(fds[fd].startswith("pipe:") for fd in ("1", done, top)), fds
    # Copy-on-write only: no writable mapping is shared with the zygote or another fork.
    assert got["shared_writable"] == [], got
    zero = "0" * 16
    assert got["caps"] == [zero] * 5 and got["pid1_caps"] == [zero] * 5, got
    assert got["nnp"] == ["1", "1"] and got["seccomp"] == ["2", "2"], got
    assert got["threads"] == ["1", "1"], got


# A 32-bit (int 0x80) and an x32 unshare: neither ABI may slip past the x86-64 filter.
OTHER_ABIS = """
import ctypes, mmap, os
def child(fn):
    pid = os.fork()
    if pid == 0:
        fn()
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
def int80():
    code = (b"\\xb8" + (310).to_bytes(4, "little") + b"\\xbb" +
            (0x10000000).to_bytes(4, "little") + b"\\xcd\\x80\\xc3")
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
def x32():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(0x40000000 | 272), ctypes.c_long(0x10000000)) == 0:
        os._exit(3)
    os._exit(ctypes.get_errno())
def main():
    return [child(int80), child(x32), open("/proc/self/status").read().count("NSpid")]
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64's other ABIs")
@ZYGOTE_ONLY
def test_other_abis_cannot_unshare(zserver):
    i386, x32, _ = expect_result(zserver.execute(OTHER_ABIS))
    assert i386 == -signal.SIGSYS, i386
    # The runs' own filter (libseccomp) kills a foreign-ABI call; the kafel policy of a
    # one-shot jail answers ENOSYS (38).
    assert x32 in (-signal.SIGSYS, 38), x32


MORE_RANDOM = """
import random, ssl, uuid
import numpy as np, pandas as pd
def main():
    return [ssl.RAND_bytes(8).hex(), random.Random().random(),
            int(np.random.default_rng().integers(1 << 62)),
            int(np.random.RandomState().randint(1 << 30)),
            pd.DataFrame({"a": range(10000)}).sample(3)["a"].tolist(), str(uuid.uuid1())]
"""


def test_more_randomness_differs_across_runs(zserver):
    runs = [expect_result(zserver.execute(MORE_RANDOM)) for _ in range(4)]
    for i in range(len(runs[0])):
        values = [json.dumps(r[i]) for r in runs]
        assert len(set(values)) == len(values), (i, values)


# --- A zygote that stops answering ---------------------------------------------------------


def process_state(pid):
    """The host's view of pid: None once reaped ("Z" while its new parent has not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@ZYGOTE_ONLY
def test_a_stuck_zygote_is_replaced(server_factory):
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_POOL="0",
                         PYEXEC_START_TIMEOUT="3")
    assert zygote_state(srv) == {"up": True, "restarts": 0}
    stuck = zygote_pids(srv)
    assert len(stuck) == 1, stuck
    os.kill(stuck[0], signal.SIGSTOP)
    try:
        # The fork it never makes: the request runs in a one-shot jail instead...
        assert expect_result(srv.execute("def main():\n    return 7\n")) == 7
        # ...and the zygote that did not answer is replaced, not kept for every later
        # request to wait on.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and zygote_state(srv)["restarts"] == 0:
            time.sleep(0.2)
        while time.monotonic() < deadline and not zygote_state(srv)["up"]:
            time.sleep(0.2)
        assert zygote_state(srv) == {"up": True, "restarts": 1}
        assert zygote_pids(srv) and zygote_pids(srv) != stuck
        assert process_state(stuck[0]) in (None, "Z"), process_state(stuck[0])
    finally:
        try:
            os.kill(stuck[0], signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert expect_result(srv.execute("def main():\n    return 8\n")) == 8


# --- A fork behaves as a fresh interpreter ---------------------------------------------------

SIGNALS = """
import os, signal, time
def main():
    got = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)]
    got = [getattr(h, "__name__", None) or signal.Handlers(h).name for h in got]
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        got.append("KeyboardInterrupt")
    r, w = os.pipe()
    os.close(r)
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        got.append("BrokenPipeError")
    return got
"""


def test_a_run_has_a_fresh_interpreters_signal_dispositions(zserver):
    # As `python3` starts: Ctrl-C raises KeyboardInterrupt, a closed pipe raises
    # BrokenPipeError, a file past RLIMIT_FSIZE fails with EFBIG; none kills the script.
    assert expect_result(zserver.execute(SIGNALS)) == [
        "default_int_handler", "SIG_IGN", "SIG_IGN", "KeyboardInterrupt", "BrokenPipeError"]


# Two runs at once, each making System V IPC objects under the same keys and then looking for
# the other's: each has an IPC namespace of its own, nested in the zygote's.
SYSV = """
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
KEYS = {"a": 0x5059, "b": 0x5060}
def main():
    mine, other = KEYS[ME], KEYS["b" if ME == "a" else "a"]
    made = [libc.shmget(mine, 4096, 0o1600) >= 0, libc.semget(mine, 1, 0o1600) >= 0,
            libc.msgget(mine, 0o1600) >= 0]
    time.sleep(2.5)  # the other run is alive meanwhile
    seen = []
    for get in (lambda k: libc.shmget(k, 0, 0), lambda k: libc.semget(k, 0, 0),
                lambda k: libc.msgget(k, 0)):
        seen.append(get(other) >= 0 or errno.errorcode[ctypes.get_errno()])
    return [made, seen, open("/proc/sysvipc/shm").read().count("\\n")]
"""


@ZYGOTE_ONLY
def test_concurrent_runs_share_no_system_v_ipc(zserver):
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(zserver.execute, SYSV.replace("KEYS[ME]", f"KEYS[{me!r}]")
                          .replace('"b" if ME == "a"', f'"b" if {me!r} == "a"'), 20)
                for me in "ab"]
        got = [expect_result(f.result()) for f in futs]
    for made, seen, shm_lines in got:
        assert made == [True, True, True], got
        assert seen == ["ENOENT"] * 3, got
        assert shm_lines == 2, got  # the header and its own segment


PIDFD = """
import ctypes, errno, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
def main():
    out = []
    for pid in (1, 3, 4, 100):
        try:
            fd = os.pidfd_open(pid)
        except OSError as e:
            out.append(errno.errorcode[e.errno])
            continue
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            out.append(libc.syscall(424, fd, sig, None, 0))  # pidfd_send_signal
        time.sleep(0.2)
        out.append(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0])
    return out
"""


@ZYGOTE_ONLY
def test_a_run_cannot_stop_or_kill_its_init_by_pidfd(zserver):
    before = zygote_state(zserver)
    # The kernel takes the signals (0) and the init, which has no handler for them, ignores
    # them: it is neither stopped nor killed; no other pid exists to open.
    assert expect_result(zserver.execute(PIDFD)) == [0, 0, "S", "ESRCH", "ESRCH", "ESRCH"]
    assert expect_result(zserver.execute("def main():\n    return 1\n")) == 1
    assert zygote_state(zserver) == before


# --- CPU ---------------------------------------------------------------------------------

def beside_a_busy_run(srv, runs):
    """`runs` trivial runs, one after another, while another run keeps 27 processes busy;
    then the zygote must not have been replaced."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        busy = ex.submit(srv.execute, busy_script(8, 27), 20)
        time.sleep(1)
        for i in range(runs):
            assert expect_result(srv.execute(f"def main():\n    return {i}\n")) == i
        assert expect_result(busy.result()) == "busy"
    assert zygote_state(srv) == {"up": True, "restarts": 0}


@ZYGOTE_ONLY
def test_a_busy_run_does_not_starve_the_zygote(server_factory):
    """Runs share the zygote's scheduling group (a process group each, no session), where
    every process of a run at nice 0 outweighs the zygote's forks 68 to 1 at nice 19. A run
    busy in all its processes starved the fork another request waited for past the start
    timeout: that request waited the whole timeout, and the zygote, taken for stuck, was
    replaced. The forks start at the normal priority; those for the pool wait at nice 19.
    A fork of the pool's that is not ready within the start timeout is killed, and its end
    waits for the zygote to reap its script's process: the pool's thread that waited for that
    end saw no other fork become ready meanwhile, and a request waiting for one was answered
    500 after seconds (1 run in 12 or more)."""
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_START_TIMEOUT="2")
    # The pool's forks are taken one after another while the busy run goes on: each next run
    # needs a fork started under its load, and the pool's own start slowly, past the timeout.
    beside_a_busy_run(srv, 12)
    assert "zygote: it made no run within the start timeout" not in srv.log_tail(200)


@ZYGOTE_ONLY
def test_a_fork_a_request_waits_for_is_not_starved_by_a_busy_run(server_factory):
    """The zygote waits at nice 19, so that its forks for the pool yield to runs; a fork a
    request waits for (here every one: no pool) gets the normal priority while it starts. At
    nice 19 among a busy run's processes at nice 0 it took longer than the start timeout."""
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_START_TIMEOUT="2",
                         PYEXEC_POOL="0")
    beside_a_busy_run(srv, 3)
    log = srv.log_tail(200)
    assert "did not start within the start timeout" not in log, log
    assert "zygote: it made no run within the start timeout" not in log, log


# --- The init's channels and the kernel's accounting ----------------------------------------

# The done word is the runner's, written after the frame; a script that writes it first (its
# descriptor is the one below the result channel's, at the top) ends only its own run, with an
# error and no result, and nothing of it stays for the next.
FORGED_DONE = """
import os, resource, time
def main():
    os.makedirs("output", exist_ok=True)
    open("output/early.txt", "w").write("x")
    if os.fork() == 0:
        while True:
            time.sleep(0.01)
    os.write(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 2, b"D")
    time.sleep(2)
    return "after the forged word"
"""


def run_children(srv):
    """The processes under the runs' inits (the spawner's children) and script processes
    (the zygote's other children), seen from the host: an idle pool run's have none, and a
    finished run is gone with all of its jail."""
    parents, cmds = process_table()
    zygote = zygote_pids(srv)[0]
    spawners = [p for p, pp in parents.items() if pp == zygote and b"pyexec-init" in cmds[p]]
    runs = {p for p, pp in parents.items() if pp == zygote or pp in spawners} - set(spawners)
    return sorted(p for p, pp in parents.items() if pp in runs)


def wait_no_leftovers(srv, seconds=10.0):
    deadline = time.monotonic() + seconds
    while run_children(srv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_children(srv) == []


@ZYGOTE_ONLY
def test_a_forged_done_word_ends_only_its_own_run_without_a_result(zserver):
    before = zygote_state(zserver)
    body = expect_script_error(zserver.execute(FORGED_DONE, timeout=10), "exception")
    assert "before main() returned" in body["message"], body
    assert "after the forged word" not in json.dumps(body), body
    wait_no_leftovers(zserver)
    after = zserver.execute("import os\ndef main():\n    return [sorted(os.listdir('/tmp')), "
                            "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]\n")
    assert expect_result(after) == [[], [1, 2]]
    assert zygote_state(zserver) == before


# System V segments are memory no process's resident set shows: when they fill the run's
# cgroup, the OOM killer may pick the init itself. Either way the answer is memory_limit, and
# the segments go with the run's IPC namespace.
SHM_FILL = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def main():
    for _ in range(64):
        sid = libc.shmget(0, 32 << 20, 0o1600)
        p = libc.shmat(sid, None, 0)
        ctypes.memset(p, 1, 32 << 20)
        libc.shmdt(ctypes.c_void_p(p))
    return "not reached"
"""


@ZYGOTE_ONLY
def test_memory_in_system_v_segments_is_a_memory_limit_and_goes_with_the_run(zserver):
    before = zygote_state(zserver)
    expect_script_error(zserver.execute(SHM_FILL, timeout=20), "memory_limit")
    wait_no_leftovers(zserver)
    after = zserver.execute("def main():\n    return open('/proc/sysvipc/shm').read()"
                            ".count('\\n')\n")
    assert expect_result(after) == 1  # the header only
    assert zygote_state(zserver) == before


# A run is a fork of the zygote and may read all of its copy of the zygote's memory: the
# frames it was forked from included the zygote's table of the script processes in flight,
# which named every other run's process (their pids in the zygote's jail: how many runs there
# are and how many were started, other customers' activity).
ZYGOTE_MEMORY = """
import sys
def main():
    found, seen = [], set()
    def look(o, depth):
        if id(o) in seen or depth > 4:
            return
        seen.add(id(o))
        if isinstance(o, dict):
            found.extend(k for k in o if type(k) is int and k > 2)
            for v in o.values():
                look(v, depth + 1)
        elif hasattr(o, "__dict__") and not isinstance(o, type) and type(o).__name__ != "module":
            look(vars(o), depth + 1)
    f = sys._getframe().f_back
    while f:
        look(f.f_locals, 0)
        f = f.f_back
    return sorted(set(found))
"""


@ZYGOTE_ONLY
def test_a_run_finds_no_other_runs_process_in_the_zygotes_memory(zserver):
    # The pool's forks are in flight at every fork: each one's table names them.
    for _ in range(3):
        assert expect_result(zserver.execute(ZYGOTE_MEMORY)) == []
