"""The runner's init, driven directly (no server): what holds at the moment it splits off the
script's process, which no timing of a black-box test can pin down."""

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
