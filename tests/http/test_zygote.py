"""Tier full's zygote: every run is a fork of one warm interpreter (src/zygote.h), and none may
reach another, the zygote, or what a later run sees.

Each test asserts first that the server it uses forks its runs from the zygote, so none passes
on one-shot jails by accident."""

import concurrent.futures
import os
import signal
import time

import pytest

from pyexec_testlib import local_tier

pytestmark = pytest.mark.skipif(
    local_tier() == "restricted", reason="the restricted tier has no zygote: one-shot jails")


@pytest.fixture(scope="module")
def zserver(server_factory):
    srv = server_factory(PYEXEC_HEALTH_DETAILS="on")
    assert zygote_state(srv)["up"], zygote_state(srv)
    return srv


def expect_result(resp):
    assert resp.status == 200, resp
    return resp.json()["result"]


def zygote_state(srv):
    resp = srv.get("/healthz")
    assert resp.status == 200, resp
    return resp.json()["zygote"]


def process_table():
    """Every process's parent and command line, seen from the host."""
    parents, cmds = {}, {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmds[int(name)] = f.read()
        except (OSError, ValueError):
            continue
    return parents, cmds


def zygote_pids(srv):
    """srv's zygote (the interpreter its nsjail started), seen from the host."""
    parents, cmds = process_table()
    return [pid for pid, cmd in cmds.items()
            if b"zygote.py" in cmd and b"nsjail" in cmds.get(parents[pid], b"")
            and parents.get(parents[pid]) == srv.pid]


SEE = """
import os, signal, socket, time
def main():
    me = os.environ.get("X", "") or open("/proc/sys/kernel/random/uuid").read().strip()
    open(f"/tmp/mine-{me}", "w").write("x")
    open(f"/dev/shm/mine-{me}", "w").write("x")
    s = socket.socket(socket.AF_UNIX)
    s.bind(b"\\0pyexec-zygote-test-" + me.encode())
    s.listen()
    time.sleep(2.5)  # the other run is alive meanwhile
    reached = []
    for pid in range(1, 4096):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            reached.append(pid)
        except ProcessLookupError:
            pass
        except PermissionError:
            reached.append(pid)
    others = []
    for name in ("a", "b"):
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(b"\\0pyexec-zygote-test-" + name.encode())
            others.append(name)
        except OSError:
            pass
    return {"me": me, "tmp": sorted(os.listdir("/tmp")), "shm": sorted(os.listdir("/dev/shm")),
            "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "signalled": reached, "sockets": others}
"""


def test_concurrent_runs_see_nothing_of_each_other(zserver):
    scripts = {name: SEE.replace('os.environ.get("X", "")', repr(name)) for name in "ab"}
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = {name: ex.submit(zserver.execute, s, 20) for name, s in scripts.items()}
        got = {name: expect_result(f.result()) for name, f in futs.items()}
    for name, r in got.items():
        assert r["tmp"] == [f"mine-{name}"], r
        assert r["shm"] == [f"mine-{name}"], r
        # Its own PID 1 (the init) and itself: no other run, no zygote, no host process.
        assert r["procs"] == [1, 2], r
        assert r["signalled"] == [1], r
        assert r["sockets"] == [name], r


HARM = {
    "kills its parent": "import os\ndef main():\n    os.kill(os.getppid(), 9)\n    return 1\n",
    "kills -1": "import os\ndef main():\n    os.kill(-1, 9)\n    return 1\n",
    "kills PID 1": "import os\ndef main():\n    os.kill(1, 9)\n    return 1\n",
    "fork-bombs": "import os\ndef main():\n    n = 0\n    for _ in range(200):\n"
                  "        try:\n            if os.fork() == 0:\n                import time\n"
                  "                time.sleep(30)\n                os._exit(0)\n"
                  "            n += 1\n        except OSError:\n            break\n"
                  "    return n\n",
    "exhausts memory": "def main():\n    x = []\n    while True:\n"
                       "        x.append(bytearray(16 << 20))\n",
    "fills /tmp": "def main():\n    i = 0\n    try:\n        while True:\n"
                  "            open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20))\n"
                  "            i += 1\n    except OSError as e:\n        return [i, e.errno]\n",
    "leaves daemons that ignore signals and keep forking":
        "import os, signal, time\ndef main():\n    for _ in range(4):\n"
        "        if os.fork() == 0:\n            os.setsid()\n"
        "            for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
        "                signal.signal(s, signal.SIG_IGN)\n"
        "            while True:\n                try:\n"
        "                    if os.fork() == 0:\n                        time.sleep(60)\n"
        "                except OSError:\n                    pass\n"
        "                time.sleep(0.01)\n"
        "    open('/tmp/left', 'w').write('x')\n    return 1\n",
    "kills every pid it can name": "import os\ndef main():\n    for p in range(1, 65536):\n"
                                   "        try:\n            os.kill(p, 9)\n"
                                   "        except OSError:\n            pass\n    return 1\n",
}

CHECK_NEXT = ("import os\ndef main():\n"
              "    return [sorted(os.listdir('/tmp')), sorted(int(p) for p in os.listdir('/proc')"
              " if p.isdigit())]\n")


@pytest.mark.parametrize("what", sorted(HARM))
def test_a_run_harms_neither_the_zygote_nor_the_next(zserver, what):
    before = zygote_state(zserver)
    zpids = zygote_pids(zserver)
    assert zpids, "found no zygote"
    resp = zserver.execute(HARM[what], timeout=10)
    assert resp.status in (200, 422), resp
    assert expect_result(zserver.execute(CHECK_NEXT)) == [[], [1, 2]]
    after = zygote_state(zserver)
    assert after == before and after["up"], (before, after)
    assert zygote_pids(zserver) == zpids


def test_zygote_killed_from_outside_is_replaced(server_factory):
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on")
    assert zygote_state(srv) == {"up": True, "restarts": 0}
    victims = zygote_pids(srv)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    # The next request succeeds at once (a one-shot jail while the zygote restarts, or the
    # new zygote), and the zygote comes back.
    assert expect_result(srv.execute("def main():\n    return 7\n")) == 7
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and zygote_state(srv) != {"up": True, "restarts": 1}:
        time.sleep(0.2)
    assert zygote_state(srv) == {"up": True, "restarts": 1}
    assert zygote_pids(srv) and zygote_pids(srv) != victims
    assert "pyexec_zygote_restarts_total 1" in srv.get("/metrics").body.decode()
    assert expect_result(srv.execute("def main():\n    return 8\n")) == 8


def test_zygote_killed_mid_run_runs_it_again_in_a_jail(server_factory):
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_POOL="1")
    script = ("import os, time\ndef main():\n    print('started', flush=True)\n"
              "    time.sleep(3)\n    return 5\n")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(srv.execute, script, 30)
        time.sleep(1.5)
        victims = zygote_pids(srv)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        resp = fut.result()
    # Once, in a jail started after the zygote's death: the answer is that run's alone.
    assert expect_result(resp) == 5
    assert resp.json()["stdout"] == "started\n"
    assert "running it again" in srv.log_tail(200)


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_run_whose_zygote_died_is_run_again_however_late_its_nsjail_exits(server_factory):
    # The run is lost when the zygote itself is gone, not only once its nsjail has exited: a
    # stopped nsjail stands for one the loaded host lets exit late (it was a 422 "killed").
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_POOL="0")
    script = ("import time\ndef main():\n    print('started', flush=True)\n"
              "    time.sleep(3)\n    return 6\n")
    victims = zygote_pids(srv)
    assert len(victims) == 1, victims
    nsjail = parent_of(victims[0])
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(srv.execute, script, 30)
        time.sleep(1.5)
        os.kill(nsjail, signal.SIGSTOP)
        try:
            os.kill(victims[0], signal.SIGKILL)
            resp = fut.result()
        finally:
            try:
                os.kill(nsjail, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert expect_result(resp) == 6
    assert resp.json()["stdout"] == "started\n"
    assert "running it again" in srv.log_tail(200)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and zygote_state(srv) != {"up": True, "restarts": 1}:
        time.sleep(0.2)
    assert zygote_state(srv) == {"up": True, "restarts": 1}
    assert expect_result(srv.execute("def main():\n    return 8\n")) == 8


RANDOM = """
import os, random, uuid, tempfile, numpy as np
def main():
    return [random.random(), float(np.random.random()), str(uuid.uuid4()),
            next(tempfile._get_candidate_names()), os.urandom(8).hex(),
            tempfile.mkstemp()[1], random.getrandbits(64)]
"""


def test_randomness_differs_across_runs(zserver):
    runs = [expect_result(zserver.execute(RANDOM)) for _ in range(4)]
    for i in range(len(runs[0])):
        values = [r[i] for r in runs]
        assert len(set(values)) == len(values), (i, values)


CHANGE = """
import builtins, json, os, sys
import pandas as pd
def main():
    json.pyexec_mark = 1
    builtins.pyexec_mark = 1
    pd.set_option("display.max_rows", 3)
    sys.modules["pyexec_mark"] = sys
    os.environ["PYEXEC_MARK"] = "1"
    os.putenv("PYEXEC_MARK2", "1")
    open("/tmp/pyexec_mark", "w").write("x")
    open("/dev/shm/pyexec_mark", "w").write("x")
    sys.path.append("/tmp")
    return 1
"""

LOOK = """
import builtins, json, os, sys
import pandas as pd
def main():
    return [hasattr(json, "pyexec_mark"), hasattr(builtins, "pyexec_mark"),
            pd.get_option("display.max_rows"), "pyexec_mark" in sys.modules,
            "PYEXEC_MARK" in os.environ, os.popen("echo $PYEXEC_MARK2").read(),
            os.listdir("/tmp"), os.listdir("/dev/shm"), "/tmp" in sys.path]
"""


def test_nothing_a_run_changes_reaches_a_later_one(zserver):
    default_rows = expect_result(zserver.execute(LOOK))[2]
    assert expect_result(zserver.execute(CHANGE)) == 1
    for _ in range(3):  # whichever ready fork runs next
        assert expect_result(zserver.execute(LOOK)) == [
            False, False, default_rows, False, False, "\n", [], [], False]


def test_a_run_is_in_its_own_cgroup_with_the_limits(zserver):
    details = zserver.get("/healthz").json()
    if not details["limits"].startswith("cgroup"):
        pytest.skip("no writable cgroup on this host")
    # More processes than PYEXEC_MAX_PROCS (32) in all: the pids limit of its cgroup stops
    # them, and a run's processes together cannot pass PYEXEC_MEMORY_MB.
    script = ("import os, time\ndef main():\n    n = 0\n    for _ in range(60):\n"
              "        try:\n            pid = os.fork()\n        except OSError:\n"
              "            break\n        if pid == 0:\n            time.sleep(5)\n"
              "            os._exit(0)\n        n += 1\n    return n\n")
    n = expect_result(zserver.execute(script))
    assert 25 <= n < 32, n


def test_forks_wait_at_low_priority_and_run_at_normal(zserver):
    script = ("import os\ndef main():\n"
              "    return [os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, 1)]\n")
    assert expect_result(zserver.execute(script)) == [0, 0]
    zygotes = zygote_pids(zserver)
    # Only a server that can give a run its priority back (CAP_SYS_NICE; Docker's default
    # capabilities lack it) lowers the zygote's.
    with open(f"/proc/{zserver.pid}/status") as f:
        caps = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    waiting = 19 if caps >> 23 & 1 else 0
    # The zygote waits lowered too, but for the forks requests wait for
    # (test_a_busy_run_does_not_starve_the_zygote).
    assert zygotes and all(os.getpriority(os.PRIO_PROCESS, p) == waiting for p in zygotes)
    # The ready forks (two, and one started for a request that took another, if any), and no
    # run that has answered still going (its teardown follows the answer, at the normal
    # priority).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
            2 <= zserver.get("/healthz").json()["poolReady"] == len(run_processes(zygotes[0])[1])):
        time.sleep(0.1)
    spawner, scripts, inits = run_processes(zygotes[0])
    # Each fork's init (the spawner's clone) and its script's process (the zygote's fork).
    ready = zserver.get("/healthz").json()["poolReady"]
    assert len(spawner) == 1 and len(scripts) == len(inits) == ready >= 2, (scripts, inits)
    waiting_now = spawner + scripts + inits
    assert all(os.getpriority(os.PRIO_PROCESS, p) == waiting for p in waiting_now), waiting_now


def run_processes(zygote):
    """The zygote's spawner, its script processes and the spawner's clones (the runs' inits)."""
    kids = children(zygote)
    spawner = [kid for kid in kids if cmdline(kid).startswith(b"/pyexec/pyexec-init")]
    inits = [kid for pid in spawner for kid in children(pid)]
    return spawner, [kid for kid in kids if kid not in spawner], inits


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(kid) for kid in f.read().split()]
    except OSError:
        return []


def test_what_nsjail_and_the_zygote_say_stays_out_of_the_json_log(zserver):
    import json

    zserver.execute("def main():\n    return 1\n")
    for line in zserver.log_path.read_text().splitlines():
        json.loads(line)


def test_zygote_off_gives_one_shot_jails(server_factory):
    srv = server_factory(PYEXEC_HEALTH_DETAILS="on", PYEXEC_ZYGOTE="off")
    assert srv.get("/healthz").json()["zygote"] is None
    assert zygote_pids(srv) == []
    assert expect_result(srv.execute("def main():\n    return 3\n")) == 3
    assert "pyexec_zygote_up 0" in srv.get("/metrics").body.decode()


def pool_gauge(srv, name):
    body = srv.get("/metrics").body.decode()
    return next(int(line.split()[1]) for line in body.splitlines()
                if line.startswith(name + " "))


def server_with_ready_pool(server_factory, size):
    """A fresh server whose pool of `size` is ready, and its zygote's pid (a list of one)."""
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_POOL=str(size))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and srv.get("/healthz").json()["poolReady"] < size:
        time.sleep(0.1)
    zygote = zygote_pids(srv)
    assert len(zygote) == 1, zygote
    return srv, zygote


def test_the_pool_starts_forks_side_by_side(server_factory):
    """A fork mostly waits (its handshake, the kernel's cgroup move): the pool starts its empty
    slots at once instead of one after another. With the zygote stopped, every slot's start
    waits on it together."""
    srv, zygote = server_with_ready_pool(server_factory, 4)
    os.kill(zygote[0], signal.SIGSTOP)
    try:
        for i in range(4):  # each takes a ready fork; its slot is started again at once
            assert expect_result(srv.execute(f"def main():\n    return {i}\n")) == i
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pool_gauge(srv, "pyexec_pool_starting") < 4:
            time.sleep(0.05)
        assert pool_gauge(srv, "pyexec_pool_starting") == 4
    finally:
        os.kill(zygote[0], signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and srv.get("/healthz").json()["poolReady"] < 4:
        time.sleep(0.1)
    assert srv.get("/healthz").json()["poolReady"] == 4
    assert pool_gauge(srv, "pyexec_pool_starting") == 0
    assert zygote_state(srv) == {"up": True, "restarts": 0}


def test_a_request_that_finds_no_fork_ready_takes_the_first_one_ready(server_factory):
    """With none ready, a request has a fork started for it and takes whichever fork is ready
    first: the pool's own starts are further along than its own, which is then kept ready for
    the next request instead of the request waiting for it."""
    srv, zygote = server_with_ready_pool(server_factory, 1)
    executor = concurrent.futures.ThreadPoolExecutor(1)
    os.kill(zygote[0], signal.SIGSTOP)
    try:
        # It takes the ready fork; the pool starts another, which waits on the zygote.
        assert expect_result(srv.execute("def main():\n    return 1\n")) == 1
        waiting = executor.submit(srv.execute, "def main():\n    return 2\n")
        # The waiting request's own start counts among the pool's.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pool_gauge(srv, "pyexec_pool_starting") < 2:
            time.sleep(0.05)
        assert pool_gauge(srv, "pyexec_pool_starting") == 2
        assert not waiting.done()
    finally:
        os.kill(zygote[0], signal.SIGCONT)
        executor.shutdown(wait=False)
    assert expect_result(waiting.result(30)) == 2
    # Neither fork is lost: the one the request did not take is ready for the next.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pool_gauge(srv, "pyexec_pool_starting") > 0:
        time.sleep(0.1)
    assert pool_gauge(srv, "pyexec_pool_starting") == 0
    ready = srv.get("/healthz").json()["poolReady"]
    assert ready in (1, 2), ready
    assert expect_result(srv.execute("def main():\n    return 3\n")) == 3
    assert zygote_state(srv) == {"up": True, "restarts": 0}


def test_runs_share_the_zygotes_scheduling_group(zserver):
    """A run is a process group of its own but no session: a session would be a scheduling
    group of its own (autogroup) as well, and then the pool's nice 19 would not yield the CPU
    to a live run."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            enabled = f.read().strip() == "1"
    except OSError:
        enabled = False
    if not enabled:
        pytest.skip("the kernel groups no sessions for scheduling here")
    script = ("import os\ndef main():\n"
              "    return [open('/proc/self/autogroup').read().split()[0],"
              " os.getpgid(0) == os.getpid(), os.getsid(0)]\n")
    group, own_group, sid = expect_result(zserver.execute(script))
    with open(f"/proc/{zygote_pids(zserver)[0]}/autogroup") as f:
        assert group == f.read().split()[0]
    # Its process group is its own (kill(0) reaches only the run's script process and what it
    # started); its session's leader is outside its pid namespace.
    assert own_group and sid == 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def test_a_runs_init_is_a_small_c_process_not_a_copy_of_the_interpreter(server_factory):
    """The only fork of the warm interpreter a run makes is its script's process: its PID 1 is
    the spawner's clone, whose memory is a few hundred kilobytes, not the zygote's sixty
    megabytes of page tables copied and freed again."""
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on", PYEXEC_POOL="2")
    zygote = zygote_pids(srv)[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(run_processes(zygote)[2]) != 2:
        time.sleep(0.1)
    spawner, scripts, inits = run_processes(zygote)
    assert len(inits) == 2 and len(scripts) == 2, (scripts, inits)
    for init in inits:
        assert os.readlink(f"/proc/{init}/exe").endswith("pyexec-init")
        assert rss_kib(init) < 4096, rss_kib(init)
    for script in scripts:
        assert rss_kib(script) > 8 * rss_kib(inits[0])
    # Inside, the script's process sees its init as PID 1.
    script = ("def main():\n    return open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0]"
              ".decode()\n")
    assert expect_result(srv.execute(script)) == "/pyexec/pyexec-init"


def test_the_spawner_killed_from_outside_the_zygote_is_replaced(server_factory):
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on")
    spawner = run_processes(zygote_pids(srv)[0])[0]
    assert len(spawner) == 1, spawner
    os.kill(spawner[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and zygote_state(srv) != {"up": True, "restarts": 1}:
        time.sleep(0.2)
    assert zygote_state(srv) == {"up": True, "restarts": 1}
    assert expect_result(srv.execute("def main():\n    return 9\n")) == 9


def smaps_rollup(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f if line.endswith("kB\n")}


def heap_kib(pid):
    with open(f"/proc/{pid}/smaps") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if line.endswith("[heap]"):
            return int(next(s for s in lines[i + 1:] if s.startswith("Anonymous:")).split()[1])
    return 0


def test_the_zygotes_objects_lie_in_huge_pages_and_its_allocator_is_unseen(server_factory):
    """The warm interpreter allocates with glibc (PYTHONMALLOC=malloc), so its objects lie in one
    heap, which it puts in huge pages before it forks: a fork copies and an exit frees one
    page-table entry per 2 MiB of it. Its runs see the jail's usual environment."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                pytest.skip("transparent huge pages are off on this host")
    except OSError:
        pytest.skip("no transparent huge pages on this host")
    srv = server_factory(fresh=True, PYEXEC_HEALTH_DETAILS="on")
    zygote = zygote_pids(srv)[0]
    anon = smaps_rollup(zygote)
    # With Python's own allocator its objects lie in hundreds of 1 MiB arenas; the heap held
    # 12 of 42 MiB, and no range of it was in huge pages.
    assert heap_kib(zygote) > 0.7 * anon["Anonymous"], (heap_kib(zygote), anon)
    assert anon["AnonHugePages"] >= 2048, anon
    env = expect_result(srv.execute("import os\ndef main():\n    return sorted(os.environ)\n"))
    assert env == ["HOME", "LANG", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "PATH", "TMPDIR"], env
