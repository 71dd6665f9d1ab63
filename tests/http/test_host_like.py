"""What every Linux host gives a Python script, given inside the jail on purpose, and
the sandbox's promises kept by each addition: /dev/shm, localhost, /bin/sh and the POSIX tools,
the user and group files, terminals, /dev/std*, /etc/services, Debian's sitecustomize and the
packages installed beside numpy and pandas. docs/security.md, "What a script sees", lists them;
tests/stdlib_compat runs CPython's own test suite against the same jail."""

import concurrent.futures
import importlib.util

import pytest

from pyexec_testlib import check_healthy, expect_ok, external_url

# Debian's base-passwd accounts and groups: what the jail's /etc/passwd and /etc/group may name.
SYSTEM_USERS = {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news",
                "uucp", "proxy", "www-data", "backup", "list", "irc", "_apt", "nobody"}
SYSTEM_GROUPS = {"root", "daemon", "bin", "sys", "adm", "tty", "disk", "lp", "mail", "news",
                 "uucp", "man", "proxy", "kmem", "dialout", "fax", "voice", "cdrom", "floppy",
                 "tape", "sudo", "audio", "dip", "www-data", "backup", "operator", "list", "irc",
                 "src", "shadow", "utmp", "video", "sasl", "plugdev", "staff", "games", "users",
                 "nogroup"}


def result(server, script, timeout=30):
    return expect_ok(server.execute(script, timeout=timeout))["result"]


def concurrently(*calls):
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


# --- /dev/shm: multiprocessing ------------------------------------------------------------

@pytest.mark.full_tier_only("multiprocessing's locks are POSIX semaphores, files in the host's shared /dev/shm, which the restricted tier closes to runs (Landlock) rather than let one run fill it for the others")
def test_multiprocessing_and_process_pool_work(server):
    script = '''
import concurrent.futures, multiprocessing
def square(x):
    return x * x
def main():
    with multiprocessing.Pool(2) as pool:
        a = pool.map(square, range(5))
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        b = list(ex.map(square, range(5)))
    q = multiprocessing.Queue()
    q.put("through a queue")
    lock = multiprocessing.Lock()
    with lock:
        c = q.get(timeout=5)
    return [a, b, c]
'''
    assert result(server, script) == [[0, 1, 4, 9, 16], [0, 1, 4, 9, 16], "through a queue"]
    check_healthy(server)


@pytest.mark.full_tier_only("the run has no mount namespace: /dev/shm is the host's, closed to runs (Landlock)")
def test_dev_shm_is_capped_private_and_gone_with_the_run(server_factory):
    srv = server_factory(PYEXEC_TMP_MB="16")
    fill = '''
import errno, os
def main():
    mine = os.listdir("/dev/shm")
    written = 0
    try:
        for i in range(1000):
            with open(f"/dev/shm/fill{i}", "wb") as f:
                for _ in range(4):
                    f.write(b"x" * (1 << 20))
                    written += 1
    except OSError as e:
        return [mine, written, errno.errorcode.get(e.errno)]
    return [mine, written, "never full"]
'''
    peek = '''
import os, time
def main():
    time.sleep(0.5)
    return os.listdir("/dev/shm")
'''
    filled, seen = concurrently(lambda: result(srv, fill), lambda: result(srv, peek))
    mine, written, error = filled
    assert mine == [], f"a fresh run found {mine} in /dev/shm"
    assert error == "ENOSPC" and written <= 16, filled
    assert not any(name.startswith("fill") for name in seen), \
        f"a concurrent run saw the other run's /dev/shm: {seen}"
    assert result(srv, peek) == [], "what a run left in /dev/shm outlived it"
    check_healthy(srv)


# --- localhost on the run's own loopback ----------------------------------------------------

def test_localhost_server_and_client_in_one_run(server, tier):
    if tier == "restricted":
        pytest.skip("tier restricted refuses AF_INET by design (docs/security.md, tier table)")
    script = '''
import http.server, socket, threading, urllib.request
def main():
    httpd = http.server.HTTPServer(("localhost", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://localhost:{httpd.server_address[1]}/"
    with urllib.request.urlopen(url, timeout=5) as resp:
        status = resp.status
    httpd.shutdown()
    return [socket.gethostbyname("localhost"), socket.gethostbyname(socket.gethostname()), status]
'''
    assert result(server, script) == ["127.0.0.1", "127.0.1.1", 200]
    check_healthy(server)


@pytest.mark.full_tier_only("AF_INET is refused in tier restricted (docs/security.md, tier table)")
def test_a_runs_loopback_server_is_invisible_to_a_concurrent_run(server):
    port = 47123
    listen = f'''
import socket, time
def main():
    s = socket.socket()
    s.bind(("127.0.0.1", {port}))
    s.listen()
    s.settimeout(4)
    try:
        s.accept()
        return "someone connected"
    except socket.timeout:
        return "nobody connected"
'''
    connect = f'''
import socket, time
def main():
    time.sleep(1)
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2)
        return "CONNECTED"
    except OSError as e:
        return "ERR:" + type(e).__name__
'''
    listened, connected = concurrently(lambda: result(server, listen),
                                       lambda: result(server, connect))
    assert connected == "ERR:ConnectionRefusedError", connected
    assert listened == "nobody connected"
    check_healthy(server)


@pytest.mark.full_tier_only("the run has no network namespace (AF_INET is refused instead)")
def test_only_a_loopback_interface(server):
    script = '''
import socket
def main():
    return sorted(name for _, name in socket.if_nameindex())
'''
    assert result(server, script) == ["lo"]
    check_healthy(server)


# --- /bin/sh and the POSIX tools --------------------------------------------------------------

def test_shell_and_posix_tools(server):
    script = '''
import os, subprocess
def main():
    return [subprocess.run("printf 'b\\\\na\\\\n' | sort | tr a-z A-Z | head -n 1", shell=True,
                           capture_output=True, text=True).stdout,
            os.popen("echo $((6 * 7))").read(), os.system("true"),
            subprocess.getoutput("ls / | grep -c usr")]
'''
    assert result(server, script) == ["A\n", "42\n", 0, "1"]
    check_healthy(server)


def test_setuid_programs_gain_nothing(server, tier):
    script = '''
import os, stat, subprocess
def main():
    found = sorted(f for f in os.listdir("/usr/bin")
                   if os.lstat("/usr/bin/" + f).st_mode & stat.S_ISUID)
    runs = {}
    for cmd in (["su", "-c", "id -u", "root"], ["mount", "-t", "tmpfs", "none", "/tmp"],
                ["passwd", "-d", "root"], ["newgrp", "root"]):
        if cmd[0] in found:
            p = subprocess.run(["/usr/bin/" + cmd[0]] + cmd[1:], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=10)
            runs[cmd[0]] = [p.returncode, p.stdout]
    nnp = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")]
    usr_bin = [l.split()[5] for l in open("/proc/self/mountinfo") if l.split()[4] == "/usr/bin"]
    return [found, runs, nnp, usr_bin, os.geteuid()]
'''
    found, runs, nnp, usr_bin, euid = result(server, script)
    if not found:
        pytest.skip("no set-uid program in /usr/bin to try (the image strips every set-uid bit)")
    assert runs, f"none of the tried programs is among {found}"
    for name, (code, out) in runs.items():
        assert code != 0 and out.strip() != "0", f"{name} succeeded: {code} {out!r}"
    assert nnp == ["1"]
    assert euid != 0
    if tier == "full":
        assert usr_bin and "nosuid" in usr_bin[0] and "ro" in usr_bin[0].split(","), usr_bin
    check_healthy(server)


# --- the user and group files -----------------------------------------------------------------

@pytest.mark.full_tier_only("the run sees the container's /etc/passwd (the image ships Debian's)")
def test_user_and_group_files_are_the_projects(server):
    script = '''
import grp, pwd
def main():
    return [pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name, pwd.getpwnam("nobody").pw_dir,
            sorted(p.pw_name for p in pwd.getpwall()), sorted(g.gr_name for g in grp.getgrall()),
            sorted(m for g in grp.getgrall() for m in g.gr_mem)]
'''
    root, root_group, home, users, groups, members = result(server, script)
    assert [root, root_group, home] == ["root", "root", "/tmp"]
    assert set(users) == SYSTEM_USERS, set(users) ^ SYSTEM_USERS
    assert set(groups) == SYSTEM_GROUPS, set(groups) ^ SYSTEM_GROUPS
    assert members == []
    check_healthy(server)


def test_archives_with_root_as_owner(server):
    script = '''
import shutil, tarfile, tempfile
def main():
    tmp = tempfile.gettempdir()
    open(f"{tmp}/f.txt", "w").write("x")
    name = shutil.make_archive(f"{tmp}/a", "gztar", tmp, "f.txt", owner="root", group="root")
    with tarfile.open(name) as t:
        return [[m.uname, m.gname] for m in t.getmembers()]
'''
    assert result(server, script) == [["root", "root"]]
    check_healthy(server)


# --- terminals ----------------------------------------------------------------------------------

def test_pty_works(server):
    script = '''
import os, pty
def main():
    parent, child = pty.openpty()
    os.write(child, b"hello\\n")
    return [os.read(parent, 100).decode(), os.isatty(child), os.ttyname(child).startswith("/dev/pts/")]
'''
    assert result(server, script) == ["hello\r\n", True, True]
    check_healthy(server)


@pytest.mark.full_tier_only("the run has no mount namespace: /dev/pts is the host's, where other runs can list (not open) its terminals")
def test_a_runs_terminals_are_its_own(server):
    hold = '''
import os, pty, time
def main():
    fds = [pty.openpty() for _ in range(3)]
    time.sleep(2.5)
    return sorted(os.listdir("/dev/pts"))
'''
    peek = '''
import os, time
def main():
    time.sleep(1)
    names = sorted(os.listdir("/dev/pts"))
    opened = []
    for n in range(8):
        try:
            os.close(os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY))
            opened.append(n)
        except OSError:
            pass
    return [names, opened]
'''
    held, (names, opened) = concurrently(lambda: result(server, hold),
                                         lambda: result(server, peek))
    assert held == ["0", "1", "2", "ptmx"]
    assert names == ["ptmx"] and opened == [], f"a run saw another run's terminals: {names} {opened}"
    check_healthy(server)


# --- /dev/stdout and friends ----------------------------------------------------------------

def test_dev_stdout_stderr_and_fd_reach_the_output(server):
    script = '''
import os, subprocess, sys
def main():
    print("one", flush=True)
    with open("/dev/stdout", "w") as f:
        f.write("two\\n")
    with open("/dev/stderr", "w") as f:
        f.write("three\\n")
    subprocess.run("echo four > /dev/stdout; echo five >&2", shell=True)
    with open("/dev/fd/1", "w") as f:
        f.write("six\\n")
    with open("/dev/stdin") as f:
        stdin = f.read()
    return [stdin, sorted(os.listdir("/dev/fd"))[:3]]
'''
    body = expect_ok(server.execute(script))
    assert body["stdout"] == "one\ntwo\nthree\nfour\nfive\nsix\n"
    assert body["result"] == ["", ["0", "1", "2"]]
    check_healthy(server)


def test_output_of_a_child_that_outlives_the_script(server):
    """The output goes through a relay in the jail's init: what the script wrote before it
    ended arrives whole, and a child that keeps writing cannot hold the answer."""
    script = '''
import os, subprocess, sys
def main():
    sys.stdout.write("x" * 300000 + "\\n")
    sys.stdout.flush()
    subprocess.Popen("while true; do echo late; done", shell=True)
    return "done"
'''
    body = expect_ok(server.execute(script, timeout=10))
    assert body["result"] == "done"
    assert body["stdout"].startswith("x" * 300000 + "\n")
    check_healthy(server)


# --- /etc files the standard library reads ---------------------------------------------------

def test_services_protocols_and_sitecustomize(server):
    script = '''
import socket
def main():
    import sitecustomize
    return [socket.getservbyname("http", "tcp"), socket.getservbyport(443, "tcp"),
            socket.getprotobyname("udp"), sitecustomize.__name__]
'''
    assert result(server, script) == [80, "https", 17, "sitecustomize"]
    check_healthy(server)


@pytest.mark.full_tier_only("the run sees the container's /etc/hosts")
def test_hosts_file_is_the_projects(server):
    script = "def main():\n    return open('/etc/hosts').read().split()\n"
    assert result(server, script) == ["127.0.0.1", "localhost", "127.0.1.1", "pyexec", "::1",
                                      "localhost", "ip6-localhost", "ip6-loopback"]
    check_healthy(server)


# --- packages installed beside numpy and pandas ------------------------------------------------

@pytest.mark.skipif(bool(external_url()) or importlib.util.find_spec("matplotlib") is None,
                    reason="python3-matplotlib is not installed here (an external server: not in the image)")
def test_matplotlib_renders_a_png(server):
    script = '''
import io
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
def main():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1, 4, 9], label="squares")
    ax.set_title("pyexec")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return [data[:8].hex(), len(data) > 5000]
'''
    assert result(server, script, timeout=60) == ["89504e470d0a1a0a", True]
    check_healthy(server)


@pytest.mark.skipif(bool(external_url()) or importlib.util.find_spec("scipy") is None,
                    reason="python3-scipy is not installed here (an external server: not in the image)")
def test_scipy_imports_and_computes(server):
    script = '''
import scipy.linalg, scipy.stats, numpy
def main():
    return [round(float(scipy.linalg.det(numpy.eye(3) * 2)), 6),
            round(float(scipy.stats.norm.cdf(0)), 6)]
'''
    assert result(server, script, timeout=60) == [8.0, 0.5]
    check_healthy(server)


def test_internet_still_unreachable_with_loopback_up(server):
    script = '''
import socket
def main():
    out = []
    for addr in [("1.1.1.1", 443), ("169.254.169.254", 80)]:
        try:
            socket.create_connection(addr, timeout=2)
            out.append("CONNECTED")
        except OSError as e:
            out.append(type(e).__name__)
    return out
'''
    got = result(server, script)
    assert "CONNECTED" not in got, got
    check_healthy(server)
