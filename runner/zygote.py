"""pyexec zygote: one warm interpreter per server, inside nsjail, that never runs user code.

    python3 -I -u zygote.py CTL_FD FILTER_FD RESULT_MAX PRELOAD OUTPUT_CAPS RUN_LIMITS TMP

It imports runner.py (bound beside it) and the PRELOAD modules, reads the seccomp program the
server compiled (struct sock_filter array) from FILTER_FD until EOF, says "READY" on CTL_FD (a
SOCK_SEQPACKET socket), with a pidfd of itself, and then, for each message there carrying six descriptors (the run's
stdin, stdout, stderr, result channel, status channel and a handshake socket), forks a run:

1. the fork (a clone into new namespaces) takes its own user (uid 65534 mapped onto itself), mount, PID, IPC, UTS and network
   namespaces, private /tmp, /dev/shm and terminals, a loopback of its own, and the run's
   RLIMIT_NPROC and RLIMIT_CPU (RUN_LIMITS "nproc,cpu"; TMP "megabytes,inodes");
2. it is the new PID namespace's first process: it mounts its /proc, sends a pidfd of
   itself on the handshake socket and waits for the server's "G" (the server has moved it into
   the run's cgroup by then, so nothing of the run escapes it);
3. it then drops every capability, sets no_new_privs and the seccomp program, reseeds what is
   random, and becomes the runner's init (runner.serve): the protocol from there is the one
   of a one-shot jail.

Every run is a fork of this untouched process: nothing a run does reaches a later one.
"""

import ctypes
import gc
import os
import signal
import socket
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 38, 22, 24
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2
RUN_FDS = 6  # stdin, stdout, stderr, result channel, status channel, handshake

libc = ctypes.CDLL(None, use_errno=True)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, dst, fstype, flags, data):
    check(libc.mount(src, dst, fstype, ctypes.c_ulong(flags), data), f"mount {dst!r}")


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def place_fds(fds):
    """fds become 0..len-1, every other descriptor is closed."""
    base = max(max(fds) + 1, len(fds))
    moved = [os.dup2(fd, base + i, inheritable=False) for i, fd in enumerate(fds)]
    for i, fd in enumerate(moved):
        os.dup2(fd, i, inheritable=(i < 3))
    os.closerange(len(fds), base + len(fds) + 1)
    os.closerange(base + len(fds) + 1, 1 << 16)


def loopback_up():
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


NAMESPACES = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET |
              CLONE_NEWUTS)
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
pyapi = ctypes.pythonapi
libc_gil = ctypes.PyDLL(None, use_errno=True)  # holds the GIL across the call


def clone_run():
    """A fork that is at once the first process of new namespaces (one fork per run instead
    of two: a fork costs milliseconds of page tables here). CPython's fork hooks run as for
    os.fork; glibc's cached thread id in the child is stale, which only this init (no user
    code) sees: the script's process is an os.fork of it. Returns the pid, 0 in the child."""
    pyapi.PyOS_BeforeFork()
    pid = libc_gil.syscall(ctypes.c_long(SYS_CLONE), ctypes.c_ulong(NAMESPACES | signal.SIGCHLD),
                           None, None, None, None)
    err = ctypes.get_errno()
    if pid == 0:
        pyapi.PyOS_AfterFork_Child()
    else:
        pyapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def new_namespaces(cfg):
    """Step 1, in the run's first process (single-threaded, no user code has run)."""
    uid, gid = os.getuid(), os.getgid()
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{uid} {uid} 1\n")
    write_file("/proc/self/gid_map", f"{gid} {gid} 1\n")
    # Its user namespace keeps the zygote's RLIMIT_NPROC as the cap of all runs together
    # (each level of nested namespaces counts); the run itself gets its own.
    nproc, cpu = cfg["limits"]
    import resource

    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    mb, inodes = cfg["tmp"]
    mount(b"none", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
          f"size={mb}m,nr_inodes={inodes},mode=0700".encode())
    mount(b"none", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
          f"size={mb}m,nr_inodes={inodes},mode=01777".encode())
    mount(b"devpts", b"/dev/pts", b"devpts", MS_NOSUID | MS_NOEXEC,
          b"newinstance,ptmxmode=0666,mode=0620")
    loopback_up()
    os.chdir("/tmp")


def drop_privileges(program):
    """Step 3: no capability (not even in the bounding set), no_new_privs, the filter."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    header = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def reseed():
    """What the zygote seeded once would repeat in every run: seeded again from the kernel."""
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None:
        mp.current_process().authkey = os.urandom(32)


def first_process(cfg):
    """Step 2 and 3, as the run's PID 1; never returns."""
    # Read-only, as a one-shot jail's (the zygote's own is writable for the uid maps).
    mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, None)
    handshake = socket.socket(fileno=5)
    pidfd = os.pidfd_open(os.getpid())
    socket.send_fds(handshake, [b"P"], [pidfd])
    os.close(pidfd)
    if handshake.recv(1) != b"G":
        os._exit(72)
    handshake.close()
    # Its cgroup is the root of what it sees, after the server moved it there.
    check(libc.unshare(CLONE_NEWCGROUP), "unshare cgroup")
    drop_privileges(cfg["filter"])
    reseed()
    cfg["runner"].serve(3, 4, cfg["result_max"], cfg["caps"], False)
    os._exit(0)


def run_child(fds, cfg):
    """The run's PID 1, cloned into its namespaces: never returns, never reports to the
    zygote, which reaps it."""
    try:
        signal.set_wakeup_fd(-1)
        # The init takes no KeyboardInterrupt (the script's process gets Python's handler
        # back: runner.become_init); SIGPIPE stays ignored, as Python starts with it.
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        # A process group of its own, so that kill(0) and killpg reach only the run; not a
        # session, which would also make it a scheduling group of its own (autogroup) and
        # void the priorities: ready runs wait at nice 19 (the server lowers them; the zygote
        # and a fork's start stay at the normal priority, so that busy runs do not starve them).
        os.setpgid(0, 0)
        place_fds(fds)
        new_namespaces(cfg)
        first_process(cfg)
    except BaseException as exc:
        try:
            os.write(2, f"pyexec zygote: a run failed to start: {exc}\n".encode())
        finally:
            os._exit(71)


def reap(*_):
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main():
    ctl_fd, filter_fd, result_max = (int(a) for a in sys.argv[1:4])
    preload_names, caps, limits, tmp = sys.argv[4:8]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import runner

    if SYS_CLONE is None:
        sys.exit(f"pyexec zygote: no clone system call number for {os.uname().machine}")
    program = read_all(filter_fd)
    os.close(filter_fd)
    if not program or len(program) % 8:
        sys.exit("pyexec zygote: no seccomp program")
    cfg = {
        "runner": runner,
        "filter": program,
        "result_max": result_max,
        "caps": tuple(int(a) for a in caps.split(",")),
        "limits": tuple(int(a) for a in limits.split(",")),
        "tmp": tuple(int(a) for a in tmp.split(",")),
    }
    runner.preload(preload_names)
    sys.path.pop(0)
    # Orphaned runs are reparented here: reap them whatever the nsjail's PID 1 is.
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGCHLD, reap)
    ctl = socket.socket(fileno=ctl_fd)
    # What the forks share stays shared: the collector no longer writes the old objects.
    gc.collect()
    gc.freeze()
    # With a pidfd of itself: the server sees this process's death at once, not only once
    # nsjail has noticed it and exited (a run it loses that way is run again).
    me = os.pidfd_open(os.getpid())
    socket.send_fds(ctl, [b"READY"], [me])
    os.close(me)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(ctl, 16, RUN_FDS + 1)
        if not msg:
            os._exit(0)  # the server is gone
        if len(fds) == RUN_FDS:
            try:
                if clone_run() == 0:
                    run_child(fds, cfg)
            except OSError as exc:
                print(f"pyexec zygote: cannot start a run: {exc}", file=sys.stderr)
        for fd in fds:
            os.close(fd)
        reap()


if __name__ == "__main__":
    main()
