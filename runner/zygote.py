"""pyexec zygote: one warm interpreter per server, inside nsjail, that never runs user code.

    PYTHONMALLOC=malloc python3 -s -P -u zygote.py CTL_FD FILTER_FD RESULT_MAX PRELOAD
                                                   OUTPUT_CAPS RUN_LIMITS TMP RECORDS_MAX

It first takes a user namespace of its own (uid mapped onto itself), in which it may enter the
namespaces of its runs, and starts the spawner (/pyexec/pyexec-init, init/spawner.c) there. It
imports runner.py (bound beside it) and the PRELOAD modules, reads the seccomp program the server
compiled (struct sock_filter array) from FILTER_FD until EOF, says "READY" on CTL_FD (a
SOCK_SEQPACKET socket), with pidfds of itself and of the spawner, and then, for each message there
carrying six descriptors (the run's stdin, stdout, stderr, result channel, status channel and a
handshake socket), starts a run:

1. the spawner clones the run's PID 1, a small C program (init/runinit.c), into new user (uid
   mapped onto itself), mount, PID, IPC, UTS and network namespaces with a private /tmp
   (TMP "megabytes,inodes"), /dev/shm, terminals and /proc and a loopback of its own; it sends
   the namespaces back here;
2. this process forks the script's process into that PID namespace (the only copy of the warm
   interpreter a run makes), which enters the others, sends pidfds of the init and of itself on
   the handshake socket and waits for the server's "G" (the server has moved both into the run's
   cgroup by then, so nothing of the run escapes it);
3. it then takes the run's RLIMIT_NPROC and RLIMIT_CPU (RUN_LIMITS "nproc,cpu"), drops every
   capability, sets no_new_privs and the seccomp program, reseeds what is random, and runs the
   runner's script steps (runner.serve_script); the init relays its output and reports on the
   status channel as a one-shot jail's init does. This process reaps it and tells the init how
   it ended.

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
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 38, 22, 24
SECCOMP_MODE_FILTER = 2
MADV_COLLAPSE = 25
RUN_FDS = 6  # stdin, stdout, stderr, result channel, status channel, handshake
# The init's namespaces as it sends them (init/runinit.c), the user namespace first: the others
# belong to it.
RUN_NAMESPACES = (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS,
                  CLONE_NEWPID)
SPAWNER = "/pyexec/pyexec-init"
# An init sets its namespaces up in a millisecond; one that takes this long is given up.
INIT_WAIT = 10.0

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


def setns(fd, kind):
    check(libc.setns(fd, kind), "setns")


def own_user_namespace():
    """A user namespace of the zygote's own, its uid mapped onto itself: the runs' namespaces
    are made in it, and in it the zygote may enter them (the one nsjail made gives it no
    capability). Before any import: the kernel refuses it to a process with threads."""
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER), "unshare user")
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{uid} {uid} 1\n")
    write_file("/proc/self/gid_map", f"{gid} {gid} 1\n")


def collapse_heap():
    """Puts the warm interpreter's heap (all of its objects: PYTHONMALLOC=malloc) in huge pages
    where 2 MiB-aligned ranges allow. A fork then copies one page-table entry per 2 MiB instead
    of 512, and a run's exit frees as few: about 2.5 ms less CPU per run (bench/README.md). Best
    effort: a kernel before 6.1 or without transparent huge pages leaves it as it is."""
    huge = 2 << 20
    with open("/proc/self/maps") as maps:
        heaps = [line.split() for line in maps if line.rstrip().endswith("[heap]")]
    for fields in heaps:
        start, end = (int(x, 16) for x in fields[0].split("-"))
        start = -(-start // huge) * huge
        end = end // huge * huge
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_COLLAPSE)


def start_spawner(program, tmp, caps, records_max):
    """The spawner, with the seccomp program its inits install; returns its socket and pid."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    pid = os.posix_spawn(SPAWNER, [SPAWNER, str(theirs.fileno()), tmp, caps, records_max], {})
    theirs.close()
    mine.send(program)
    return mine, pid


class Privileges:
    """What a run's process needs to drop its privileges, built once here: a fork copies each
    page it writes, so each run only makes the calls."""

    def __init__(self, program):
        self.header = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        self.data = (CapData * 2)()
        self.buf = ctypes.create_string_buffer(program, len(program))
        self.prog = SockFprog(len(program) // 8, ctypes.cast(self.buf, ctypes.c_void_p))
        self.args = (ctypes.byref(self.header), ctypes.byref(self.data), ctypes.byref(self.prog))

    def drop(self):
        """No capability (not even in the bounding set), no_new_privs, the filter."""
        header, data, prog = self.args
        cap = 0
        while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            cap += 1
        check(libc.capset(header, data), "capset")
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0), "seccomp")


def reseed():
    """What the zygote seeded once would repeat in every run: seeded again from the kernel."""
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        # The whole state from the kernel: as np.random.seed() does, at a third of the pages
        # it writes.
        key = np.frombuffer(os.urandom(624 * 4), dtype=np.uint32)
        np.random.set_state(("MT19937", key, 624))
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None:
        mp.current_process().authkey = os.urandom(32)


def go_ahead(cfg):
    """Pidfds of the init and of this process to the server, which moves both into the run's
    cgroup before its "G"."""
    import resource

    handshake = socket.socket(fileno=5)
    init, me = os.pidfd_open(1), os.pidfd_open(os.getpid())
    socket.send_fds(handshake, [b"P"], [init, me])
    os.close(init)
    os.close(me)
    if handshake.recv(1) != b"G":
        os._exit(72)
    handshake.close()
    # Its cgroup is the root of what it sees.
    check(libc.unshare(CLONE_NEWCGROUP), "unshare cgroup")
    # Its user namespace keeps the zygote's RLIMIT_NPROC as the cap of all runs together
    # (each level of nested namespaces counts); the run itself gets its own.
    nproc, cpu = cfg["limits"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    # Root made the jail's user namespace, so the signals a run queues count against root's
    # quota on the host too.
    sigpending = cfg["runner"].SIGPENDING_MAX
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (sigpending, sigpending))


def script_process(fds, ns, cfg):
    """The run's script process, forked into the init's PID namespace: enters its other
    namespaces and never returns."""
    try:
        signal.set_wakeup_fd(-1)
        # No KeyboardInterrupt before the runner (it gets Python's handler back at the end);
        # SIGPIPE stays ignored, as Python starts with it.
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        # A process group of its own, so that kill(0) and killpg reach only the run; not a
        # session, which would also make it a scheduling group of its own (autogroup) and
        # void the priorities: ready runs wait at nice 19.
        os.setpgid(0, 0)
        for fd, kind in zip(ns, RUN_NAMESPACES):
            setns(fd, kind)
        os.chdir("/tmp")
        place_fds(fds)
        go_ahead(cfg)
        cfg["privileges"].drop()
        reseed()
        runner = cfg["runner"]
        runner.set_dumpable(True)  # inside its PID namespace, as on a host
        signal.signal(signal.SIGINT, signal.default_int_handler)
        runner.serve_script(3, 4, cfg["result_max"], True)
    except BaseException as exc:
        try:
            os.write(2, f"pyexec zygote: a run failed to start: {exc}\n".encode())
        finally:
            os._exit(71)
    os._exit(0)


class Zygote:
    def __init__(self, cfg, spawner, spawner_pid):
        self.cfg = cfg
        self.spawner = spawner
        self.spawner_pid = spawner_pid
        self.exited = {}  # script process -> the write end of its init's INIT_EXITED pipe

    def reap(self):
        """Tells each init how its script process ended ("<code>\n", 128 + signal when
        killed); the spawner's end is the zygote's."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.spawner_pid:
                os._exit(1)
            fd = self.exited.pop(pid, None)
            if fd is not None:
                code = os.waitstatus_to_exitcode(status)
                try:
                    os.write(fd, b"%d\n" % (128 - code if code < 0 else code))
                except OSError:
                    pass  # the init is gone: the run is over
                os.close(fd)

    def init_of(self, fds, pipes):
        """Asks the spawner for the run's init; returns its namespaces, or None."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with mine, theirs:
            stdin, stdout, stderr, result, status, handshake = fds
            socket.send_fds(self.spawner, [b"R"], [stdout, stderr, status, pipes["out"][0],
                                                   pipes["done"][0], pipes["exited"][0],
                                                   theirs.fileno()])
            theirs.close()
            mine.settimeout(INIT_WAIT)
            msg, ns, _flags, _addr = socket.recv_fds(mine, 8, len(RUN_NAMESPACES))
        if msg == b"I" and len(ns) == len(RUN_NAMESPACES):
            return ns
        for fd in ns:
            os.close(fd)
        return None

    def start_run(self, fds):
        pipes = {name: os.pipe() for name in ("out", "done", "exited")}
        ns = []
        try:
            ns = self.init_of(fds, pipes)
            if ns is None:
                return
            stdin, _stdout, stderr, result, _status, handshake = fds
            # What this process forks from now on is born in the run's PID namespace (the
            # zygote forks nothing else; there is no way back to its own without a capability
            # there, and none is needed: the next run's namespace replaces it).
            setns(ns[-1], CLONE_NEWPID)
            # The script's process is reaped only once it is known whose it is.
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
            try:
                pid = os.fork()
                if pid == 0:
                    # The other runs' processes are none of this one's business.
                    self.exited.clear()
                    script_process([stdin, pipes["out"][1], stderr, result, pipes["done"][1],
                                    handshake], ns[:-1], self.cfg)
                self.exited[pid] = os.dup(pipes["exited"][1])
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        except OSError as exc:
            print(f"pyexec zygote: cannot start a run: {exc}", file=sys.stderr)
        finally:
            for fd in [fd for pair in pipes.values() for fd in pair] + (ns or []):
                os.close(fd)


def main():
    ctl_fd, filter_fd, result_max = (int(a) for a in sys.argv[1:4])
    preload_names, caps, limits, tmp, records_max = sys.argv[4:9]
    os.environ.pop("PYTHONMALLOC", None)  # read at start-up (jail.c); runs see the jail's usual env
    own_user_namespace()
    for fd in (ctl_fd, filter_fd):
        os.set_inheritable(fd, False)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import runner

    runner.one_arena()
    program = read_all(filter_fd)
    os.close(filter_fd)
    if not program or len(program) % 8:
        sys.exit("pyexec zygote: no seccomp program")
    spawner, spawner_pid = start_spawner(program, tmp, caps, records_max)
    cfg = {
        "runner": runner,
        "privileges": Privileges(program),
        "result_max": result_max,
        "limits": tuple(int(a) for a in limits.split(",")),
    }
    z = Zygote(cfg, spawner, spawner_pid)
    runner.preload(preload_names)
    sys.path.pop(0)
    # A preloaded module may start threads, and SIGCHLD may then reach one of them while the
    # main thread waits, which would wait on: it waits for the wake-up descriptor too.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ctl = socket.socket(fileno=ctl_fd)
    # What the forks share stays shared: the collector no longer writes the old objects.
    gc.collect()
    gc.freeze()
    collapse_heap()
    # With pidfds of itself and of the spawner: the server sees this process's death at once,
    # not only once nsjail has noticed it and exited (a run it loses that way is run again),
    # and gives both the normal priority while a request waits for a run.
    me, sp = os.pidfd_open(os.getpid()), os.pidfd_open(spawner_pid)
    socket.send_fds(ctl, [b"READY"], [me, sp])
    os.close(me)
    os.close(sp)
    import select

    while True:
        ready = select.select([ctl, wake_r], [], [])[0]
        if wake_r in ready:
            while True:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    break
        if ctl in ready:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 16, RUN_FDS + 1)
            if not msg:
                os._exit(0)  # the server is gone
            if len(fds) == RUN_FDS:
                z.start_run(fds)
            for fd in fds:
                os.close(fd)
        z.reap()


if __name__ == "__main__":
    main()
