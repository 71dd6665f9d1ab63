"""The runner's init, driven directly (no server): what holds at the moment it splits off the
script's process, which no timing of a black-box test can pin down."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER_DIR = Path(__file__).resolve().parents[2] / "runner"

# Stops at the fork and prints the init's dumpable flag at that moment (PR_GET_DUMPABLE).
AT_FORK = """
import ctypes, os, sys
sys.path.insert(0, RUNNER_DIR)
import runner

def fork():
    print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), flush=True)
    os._exit(0)

os.fork = fork
r, w = os.pipe()
runner.become_init(w, "0,0,0,0", RESTRICTED)
"""


@pytest.mark.parametrize("restricted", [False, True], ids=["full", "restricted"])
def test_the_init_is_not_dumpable_before_the_script_exists(restricted):
    """Were it made non-dumpable only after the fork, the script's children could open
    /proc/<init>/mem (same uid) in that moment and write the status channel's bytes."""
    code = AT_FORK.replace("RUNNER_DIR", repr(str(RUNNER_DIR))).replace("RESTRICTED",
                                                                        repr(restricted))
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done


# The init as a pid namespace's first process, with the script's process made unable to exit
# by itself (its _exit pauses): the init must still answer, from the script's "done". Prints, as
# JSON lines on the init's stdout, when it reported and when it ended the jail (and whether the
# script's process was alive then), then the channels' bytes.
ANSWERS_FIRST = """
import ctypes, json, os, signal, sys
sys.path.insert(0, RUNNER_DIR)
import runner

def never(code):
    while True:
        signal.pause()

def note(*event):
    os.write(1, json.dumps(event).encode() + b"\\n")

def end_jail(reap, orig=runner.end_jail):
    alive = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    note("end", reap, alive)
    orig(reap)

def write_all(fd, data, orig=runner.write_all):
    if fd == status_w:
        note("status", data.decode())
    orig(fd, data)

def read_all(fd):
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data.decode()

script = SCRIPT
job = json.dumps({"script": len(script), "stdin": 0, "files": []}).encode() + b"\\n" + script
(result_r, result_w), (status_r, status_w), (out_r, out_w), (in_r, in_w) = (
    os.pipe(), os.pipe(), os.pipe(), os.pipe())
os.write(in_w, job)
os.close(in_w)
if ctypes.CDLL(None, use_errno=True).unshare(0x20000000) != 0:  # CLONE_NEWPID
    sys.exit(f"unshare: {os.strerror(ctypes.get_errno())}")
pid = os.fork()
if pid == 0:  # the namespace's init: its kill(-1) reaches no process outside
    os.dup2(in_r, 0)
    os.dup2(out_w, 1)
    os.chdir(WORKDIR)
    runner._exit = never
    runner.end_jail = end_jail
    runner.write_all = write_all
    runner.serve(result_w, status_w, 1 << 20, (8, 1 << 20, 256, 4), False)
for fd in (result_w, status_w, out_w, in_r):
    os.close(fd)
got = {"result": read_all(result_r), "status": read_all(status_r), "out": read_all(out_r)}
got["exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(got))
"""

NO_FILES = b"def main():\n    return 42\n"
WITH_FILES = (b"import os\ndef main():\n    os.mkdir('output')\n"
              b"    open('output/f', 'w').write('x')\n    return 42\n")


def answer_first(tmp_path, script):
    if os.geteuid() != 0:
        pytest.skip("a pid namespace of its own needs root")
    code = (ANSWERS_FIRST.replace("RUNNER_DIR", repr(str(RUNNER_DIR)))
            .replace("WORKDIR", repr(str(tmp_path))).replace("SCRIPT", repr(script)))
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["result"] == 'READY\n{"status":"ok"}\n42', got
    assert got["exit"] == 0, got
    return got, [json.loads(line) for line in got["out"].splitlines()]


def test_the_init_answers_from_the_scripts_done_before_it_ends_the_jail(tmp_path):
    """The script's process's teardown (milliseconds for a forked interpreter) is not waited
    for: once it says its frame is written, and with no output/ to collect, the init reports
    first and only then ends the jail. Were the init to wait for the script's process to exit,
    it would wait forever here."""
    got, events = answer_first(tmp_path, NO_FILES)
    assert got["status"] == "0 0\n", got
    assert events == [["status", "0 0\n"], ["end", True, True]], events


def test_the_init_ends_the_jail_before_it_walks_output(tmp_path):
    """With output/ to collect, every other process of the jail is killed before the walk (a
    kill, which no sibling can undo as it could a stop), and reaped only after the report."""
    got, events = answer_first(tmp_path, WITH_FILES)
    assert got["status"] == "0 8\nF 1 1\nfx", got
    assert events[:2] == [["end", False, True], ["status", got["status"]]], events
    assert events[2][:2] == ["end", True], events


WARM = """
import json, linecache, sys
sys.path.insert(0, RUNNER_DIR)
import runner
encoded, real = [], runner.encode_result
runner.encode_result = lambda value, limit: encoded.append(value) or real(value, limit)
runner.warm_up(1 << 20)
print(json.dumps([encoded, "__script__" in sys.modules, "<script>" in linecache.cache,
                  sys.argv]))
"""


def test_the_warm_up_runs_the_runners_steps_and_leaves_nothing():
    """Before READY the script's process runs the runner's own steps once on a script of its
    own (so that their pages are copied before a request waits for them); the script sees no
    module, source line or value of it."""
    code = WARM.replace("RUNNER_DIR", repr(str(RUNNER_DIR)))
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    encoded, module_left, source_left, argv = json.loads(done.stdout)
    assert encoded == [{"ok": [1, 2.5, None, True, "x"]}]
    assert not module_left and not source_left
    assert argv == ["<script>"]  # what the script's own load sets again
