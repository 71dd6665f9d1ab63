"""The jail's syscall policy (config/seccomp.kafel), probed from inside with ctypes.

Each denied call is made for real from a script; the policy answers EPERM (ENOSYS for clone3,
so libc falls back to clone, whose flags seccomp can see). Calls marked `allowed_without` would
succeed in the jail were it not for the policy (they need no privilege), so they prove the
filter itself; the others fail without privilege anyway and the policy is a second wall.
"""

import platform

import pytest

from pyexec_testlib import check_healthy, expect_ok

EPERM, ENOSYS = 1, 38

# name: (x86_64 number, args, expected errno, allowed without the policy)
CALLS = {
    "ptrace": (101, (0, 0, 0, 0), EPERM, True),  # PTRACE_TRACEME
    "process_vm_readv": (310, ("self", 0, 0, 0, 0, 0), EPERM, True),
    "process_vm_writev": (311, ("self", 0, 0, 0, 0, 0), EPERM, True),
    "kcmp": (312, ("self", "self", 0, 0, 0), EPERM, True),
    "pidfd_getfd": (438, (0, 0, 0), EPERM, False),
    "process_madvise": (440, (0, 0, 0, 0, 0), EPERM, False),
    "mount": (165, ("b'none'", "b'/tmp'", "b'tmpfs'", 0, 0), EPERM, False),
    "umount2": (166, ("b'/tmp'", 0), EPERM, False),
    "pivot_root": (155, ("b'/tmp'", "b'/tmp'"), EPERM, False),
    "chroot": (161, ("b'/tmp'",), EPERM, False),
    "unshare_user": (272, (0x10000000,), EPERM, True),  # CLONE_NEWUSER needs no privilege
    "unshare_net": (272, (0x40000000,), EPERM, False),
    "setns": (308, (0, 0), EPERM, False),
    "clone_newuser": (56, (0x10000000 | 17, 0, 0, 0, 0), EPERM, False),
    "clone3": (435, (0, 0), ENOSYS, False),
    "open_tree": (428, (-100, "b'/tmp'", 1), EPERM, False),
    "move_mount": (429, (0, 0, 0, 0, 0), EPERM, False),
    "fsopen": (430, ("b'tmpfs'", 0), EPERM, False),
    "fsconfig": (431, (0, 0, 0, 0, 0), EPERM, False),
    "fsmount": (432, (0, 0, 0), EPERM, False),
    "fspick": (433, (0, 0, 0), EPERM, False),
    "mount_setattr": (442, (0, 0, 0, 0, 0), EPERM, False),
    "open_by_handle_at": (304, (0, 0, 0), EPERM, False),
    "name_to_handle_at": (303, (-100, "b'/tmp'", "buf", "buf", 0), EPERM, True),
    "bpf": (321, (0, 0, 0), EPERM, False),
    "perf_event_open": (298, ("buf", 0, -1, -1, 0), EPERM, False),
    "userfaultfd": (323, (1,), EPERM, True),  # UFFD_USER_MODE_ONLY needs no privilege
    "io_uring_setup": (425, (1, "buf"), EPERM, True),
    "io_uring_enter": (426, (0, 0, 0, 0, 0, 0), EPERM, False),
    "io_uring_register": (427, (0, 0, 0, 0), EPERM, False),
    "keyctl": (250, (0, -3, 0), EPERM, True),  # KEYCTL_GET_KEYRING_ID of the session ring
    "add_key": (248, ("b'user'", "b'k'", "b'v'", 1, -3), EPERM, True),
    "request_key": (249, ("b'user'", "b'k'", 0, 0), EPERM, False),
    "kexec_load": (246, (0, 0, 0, 0), EPERM, False),
    "kexec_file_load": (320, (0, 0, 0, 0, 0), EPERM, False),
    "init_module": (175, (0, 0, "b''"), EPERM, False),
    "finit_module": (313, (0, "b''", 0), EPERM, False),
    "delete_module": (176, ("b'x'", 0), EPERM, False),
    "reboot": (169, (0, 0, 0, 0), EPERM, False),
    "swapon": (167, ("b'/tmp/x'", 0), EPERM, False),
    "swapoff": (168, ("b'/tmp/x'",), EPERM, False),
    "acct": (163, (0,), EPERM, False),
    "quotactl": (179, (0, 0, 0, 0), EPERM, False),
    "settimeofday": (164, (0, 0), EPERM, False),
    "clock_settime": (227, (0, "buf"), EPERM, False),
    "clock_adjtime": (305, (0, "buf"), EPERM, False),
    "adjtimex": (159, ("buf",), EPERM, False),
    "syslog": (103, (3, "buf", 16), EPERM, False),  # SYSLOG_ACTION_READ_ALL
    "sethostname": (170, ("b'x'", 1), EPERM, False),
    "personality": (135, (0x0008,), EPERM, True),  # PER_LINUX32
    "iopl": (172, (3,), EPERM, False),
    "ioperm": (173, (0, 1, 1), EPERM, False),
    "lookup_dcookie": (212, (0, 0, 0), EPERM, False),
    "memfd_secret": (447, (0,), EPERM, False),
    "vhangup": (153, (), EPERM, False),
}

PROBE = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(4096)
def arg(a):
    if a == "self":
        return os.getpid()
    if a == "buf":
        return buf
    if isinstance(a, str):
        return ctypes.c_char_p(eval(a))
    return ctypes.c_long(a)
def main():
    out = {}
    for name, (nr, args) in CALLS.items():
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
        out[name] = [rc, ctypes.get_errno()]
    return out
'''


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")
def test_denied_syscalls_fail(server):
    calls = {name: (nr, list(args)) for name, (nr, args, _, _) in CALLS.items()}
    body = expect_ok(server.execute(f"CALLS = {calls!r}\n" + PROBE, timeout=10))
    got = body["result"]
    wrong = {name: got[name] for name, (_, _, errno, _) in CALLS.items()
             if got[name] != [-1, errno]}
    assert not wrong, f"these calls were not denied as the policy says: {wrong}"
    check_healthy(server)


def test_policy_is_loaded(server):
    # no_new_privs through prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc does not show it
    script = ("import ctypes\ndef main():\n"
              "    nnp = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)\n"
              "    return [nnp] + [l.split()[1] for l in open('/proc/self/status')\n"
              "                    if l.startswith('Seccomp:')]\n")
    assert expect_ok(server.execute(script))["result"] == [1, "2"]


def test_legitimate_clone_paths_still_work(server):
    """Threads, fork, subprocess-free multiprocessing primitives and asyncio: the policy only
    denies clone with namespace flags, and clone3's ENOSYS makes libc fall back."""
    script = '''
import os, threading, asyncio, concurrent.futures
def main():
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        squares = list(ex.map(lambda x: x * x, range(4)))
    async def f():
        await asyncio.sleep(0)
        return 'async'
    return [os.waitstatus_to_exitcode(status), squares, asyncio.run(f())]
'''
    assert expect_ok(server.execute(script))["result"] == [7, [0, 1, 4, 9], "async"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")
def test_policy_is_what_denies(server_factory, tmp_path, tier):
    """The same probe under an allow-all policy: the calls marked as needing no privilege do
    not fail with EPERM there, so it is the policy that stops them in the real jail. In the
    restricted tier the server's own filter on nsjail (src/filter.c) still denies those it
    covers: the control shows that layer on its own."""
    allow_all = tmp_path / "allow.kafel"
    # pyexecd picks pyexec_full or pyexec_restricted by tier; here both deny only acct.
    allow_all.write_text("POLICY pyexec_full { ERRNO(1) { acct } }\n"
                         "POLICY pyexec_restricted { USE pyexec_full }\n")
    srv = server_factory(fresh=True, PYEXEC_SECCOMP=str(allow_all))
    calls = {name: (nr, list(args)) for name, (nr, args, _, free) in CALLS.items() if free}
    got = expect_ok(srv.execute(f"CALLS = {calls!r}\n" + PROBE, timeout=10))["result"]
    denied = {name for name, rc in got.items() if rc == [-1, EPERM]}
    by_server_filter = set() if tier == "full" else {
        "ptrace", "process_vm_readv", "process_vm_writev", "unshare_user", "userfaultfd",
        "io_uring_setup", "keyctl", "add_key"}
    assert denied == by_server_filter, \
        f"denied without nsjail's policy: {sorted(denied)}; expected {sorted(by_server_filter)}"
    assert set(calls) - denied, "the control run must show some call the policy alone denies"


OWN_SCHEDULING = '''
import os, resource
def main():
    out = {}
    def attempt(name, call):
        try:
            call()
            out[name] = "ok"
        except OSError as exc:
            out[name] = exc.errno
    attempt("nice", lambda: os.nice(1))
    attempt("own", lambda: os.setpriority(os.PRIO_PROCESS, 0, 2))
    attempt("own_policy", lambda: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)))
    attempt("own_pid", lambda: os.setpriority(os.PRIO_PROCESS, os.getpid(), 3))
    attempt("own_pid_policy",
            lambda: os.sched_setscheduler(os.getpid(), os.SCHED_BATCH, os.sched_param(0)))
    attempt("init", lambda: os.setpriority(os.PRIO_PROCESS, 1, 19))
    attempt("group", lambda: os.setpriority(os.PRIO_PGRP, 0, 19))
    attempt("user", lambda: os.setpriority(os.PRIO_USER, 0, 19))
    attempt("init_policy", lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0)))
    attempt("init_param", lambda: os.sched_setparam(1, os.sched_param(0)))
    attempt("init_affinity", lambda: os.sched_setaffinity(1, {0}))
    attempt("init_limit", lambda: resource.prlimit(1, resource.RLIMIT_CPU, (1, 1)))
    attempt("own_affinity", lambda: os.sched_setaffinity(os.getpid(), os.sched_getaffinity(0)))
    attempt("own_limit", lambda: resource.prlimit(os.getpid(), resource.RLIMIT_CORE, (0, 0)))
    out["init_now"] = [os.sched_getscheduler(1), os.getpriority(os.PRIO_PROCESS, 1)]
    return out
'''


@pytest.mark.parametrize("zygote", ["on", "off"])
def test_a_process_sets_only_its_own_scheduling(server_factory, tier, zygote):
    """All of a run shares one uid, so the kernel lets a script lower its init's priority: the
    policy refuses it (test_attacks.py::test_no_user_code_runs_after_the_answer says why), and
    its CPU affinity (onto the CPU its busy children fill) and its limits (a CPU limit had the
    kernel kill it; no open files, and its output/ went unreported). A process still sets its
    own, by 0 (os.nice) or by its pid (CPython's test_os)."""
    if tier != "full":
        pytest.skip("the restricted tier's init is no pid namespace's; it kills by uid")
    srv = server_factory(fresh=True, PYEXEC_ZYGOTE=zygote)
    got = expect_ok(srv.execute(OWN_SCHEDULING, timeout=10))["result"]
    assert got == {"nice": "ok", "own": "ok", "own_policy": "ok", "own_pid": "ok",
                   "own_pid_policy": "ok", "init": EPERM,
                   "group": EPERM, "user": EPERM, "init_policy": EPERM, "init_param": EPERM,
                   "init_affinity": EPERM, "init_limit": EPERM, "own_affinity": "ok",
                   "own_limit": "ok", "init_now": [0, 0]}, got
    check_healthy(srv)
