"""What the host-like additions of issue 18 cost each run in tier full: nsjail started with the
shipped config against the same config without them (no /usr/bin, /usr/share, /etc files,
devpts, /dev links, /dev/shm; loopback down), each running /usr/bin/true, alternated.

    /usr/bin/python3 bench/mounts.py [--runs N]      (make bench runs it)

Prints the median and the fastest wall time of each, and their difference.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDED = ("/usr/bin", "/usr/share", "/etc/python3", "/etc/python3.11", "/etc/services",
         "/etc/protocols", "/etc/mime.types", "/etc/matplotlibrc", "/etc/fonts",
         "/etc/ssl/certs", "/etc/nsswitch.conf", "/etc/hosts", "/dev/pts", "/dev/ptmx",
         "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr")


def without_additions(text):
    kept = []
    for line in text.splitlines():
        dst = re.search(r'dst: "([^"]+)"', line)
        if dst and dst.group(1) in ADDED:
            continue
        kept.append(line.replace("iface_no_lo: false", "iface_no_lo: true"))
    return "\n".join(kept) + "\n"


def nsjail():
    local = ROOT / ".local" / "bin" / "nsjail"
    return str(local) if local.exists() else "nsjail"


def command(config, shm):
    cmd = [nsjail(), "--config", config, "--quiet", "--bindmount_ro=/usr/bin/true:/pyexec/true",
           "--mount=none:/tmp:tmpfs:size=64m,mode=0700"]
    if shm:
        cmd.append("--mount=none:/dev/shm:tmpfs:size=64m,mode=01777")
    return cmd + ["--", "/pyexec/true"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    shipped = ROOT / "config" / "nsjail.cfg"
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as bare:
        bare.write(without_additions(shipped.read_text()))
        bare.flush()
        variants = {"without": command(bare.name, False), "with": command(str(shipped), True)}
        times = {name: [] for name in variants}
        for i in range(args.runs):
            for name, cmd in sorted(variants.items(), reverse=i % 2 == 1):
                start = time.perf_counter()
                proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                took = time.perf_counter() - start
                if proc.returncode != 0:
                    print(f"nsjail {name} the additions exited {proc.returncode}: {cmd}")
                    return 1
                times[name].append(took * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"per-run cost of the host-like additions (nsjail running /usr/bin/true, {args.runs} "
          "runs each, alternated):")
    for name in ("without", "with"):
        print(f"  {name:8} the additions: median {med[name]:6.2f} ms, fastest {low[name]:6.2f} ms")
    print(f"  difference:            median {med['with'] - med['without']:+6.2f} ms, "
          f"fastest {low['with'] - low['without']:+6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
