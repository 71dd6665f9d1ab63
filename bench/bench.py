"""pyexec benchmark: latency and throughput of POST /execute, cold jails against ready ones.

    make bench            (or: /usr/bin/python3 bench/bench.py --binary build/pyexecd)

Starts build/pyexecd on 127.0.0.1 with the pool off (cold: every run starts nsjail and
Python) and on (ready: jails started ahead with numpy and pandas imported), drives load from
this process, and prints one table. See bench/README.md for how to read it.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS = {
    "trivial": "def main():\n    return {'ok': True}\n",
    "numpy": ("import numpy as np\n"
              "def main():\n"
              "    a = np.arange(40000, dtype=float).reshape(200, 200)\n"
              "    return float((a @ a.T).trace())\n"),
    "pandas": ("import pandas as pd\n"
               "def main():\n"
               "    df = pd.DataFrame({'k': [i % 10 for i in range(1000)], 'v': range(1000)})\n"
               "    return {str(k): int(v) for k, v in df.groupby('k')['v'].sum().items()}\n"),
    "print10k": ("def main():\n"
                 "    for i in range(10000):\n"
                 "        print('line', i)\n"
                 "    return 10000\n"),
}

MODES = {
    "cold": {"PYEXEC_POOL": "0", "PYEXEC_ZYGOTE": "off"},
    "ready": {"PYEXEC_POOL": "8", "PYEXEC_PRELOAD": "numpy,pandas", "PYEXEC_ZYGOTE": "off"},
    "zygote": {"PYEXEC_POOL": "8", "PYEXEC_PRELOAD": "numpy,pandas", "PYEXEC_ZYGOTE": "on"},
}

# The server on its defaults, with the zygote, one-shot ready jails, and every run cold.
DEFAULTS = [("zygote", {}), ("one-shot", {"PYEXEC_ZYGOTE": "off"}),
            ("cold", {"PYEXEC_ZYGOTE": "off", "PYEXEC_POOL": "0"})]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, env, defaults=False):
        self.port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("PYEXEC_")}
        full.update(env)
        if not defaults:
            full.setdefault("PYEXEC_CONCURRENCY", "8")
            full.setdefault("PYEXEC_QUEUE", "64")
        self.log = open(f"/tmp/pyexec-bench-{self.port}.log", "wb")
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=full, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        self.pool = int(full.get("PYEXEC_POOL", "2"))
        self.wait_ready()

    def health(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("GET", "/healthz")
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return r.status, body

    def wait_ready(self, within=60):
        end = time.monotonic() + within
        while time.monotonic() < end:
            try:
                status, body = self.health()
                if status == 200 and body.get("poolReady", 0) >= self.pool:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"server on :{self.port} did not become ready")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()

    # What the server holds: to compare before and after a load.
    def footprint(self):
        pid = self.proc.pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = vm_rss_kib(pid)
        children = [p for p in all_pids() if ppid(p) == pid]
        zombies = sum(1 for p in children if state(p) == "Z")
        return {"fds": fds, "rss_kib": rss, "children": len(children), "zombies": zombies}


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def ppid(pid):
    stat = read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else -1


def state(pid):
    stat = read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[0] if stat else "?"


def vm_rss_kib(pid):
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid, field="Pss:"):
    for line in read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def uss_kib(pid):
    return pss_kib(pid, "Private_Clean:") + pss_kib(pid, "Private_Dirty:")


def zygote_of(server):
    """The zygote's interpreter (child of its nsjail, the server's child), or None."""
    for jail in (p for p in all_pids() if ppid(p) == server.proc.pid):
        for p in all_pids():
            if ppid(p) == jail and "zygote.py" in read(f"/proc/{p}/cmdline"):
                return p
    return None


def memory(server):
    """PSS of the server and everything under it, and per ready run the sum of its processes'
    PSS and USS (private memory: what one more ready run costs): a ready run is an nsjail
    and its jail, or a fork of the zygote and its children."""
    total = sum(pss_kib(p) for p in descendants(server.proc.pid))
    zygote = zygote_of(server)
    parent = zygote if zygote else server.proc.pid
    runs = [p for p in all_pids() if ppid(p) == parent]
    pss = [sum(pss_kib(q) for q in descendants(r)) for r in runs]
    uss = [sum(uss_kib(q) for q in descendants(r)) for r in runs]
    med = (lambda v: statistics.median(v) if v else 0)
    return {"total": total, "runs": len(runs), "pss": med(pss), "uss": med(uss)}


def descendants(pid):
    kids = {}
    for p in all_pids():
        kids.setdefault(ppid(p), []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def client_loop(port, script, count, think, out, deadline=None):
    body = json.dumps({"script": script}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    done = 0
    while (count is None or done < count) and (deadline is None or time.monotonic() < deadline):
        start = time.monotonic()
        try:
            conn.request("POST", "/execute", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            status = -1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        out.append((time.monotonic() - start, status))
        done += 1
        if think:
            time.sleep(think)
    conn.close()


def drive(port, script, clients, count=None, think=0.0, seconds=None):
    results, threads = [], []
    deadline = time.monotonic() + seconds if seconds else None
    t0 = time.monotonic()
    for _ in range(clients):
        t = threading.Thread(target=client_loop,
                             args=(port, script, count, think, results, deadline))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return results, wall


def summarize(results, wall):
    lat = sorted(r[0] for r in results if r[1] == 200)
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else (lambda p: 0)
    busy = sum(1 for r in results if r[1] == 429)
    errors = sum(1 for r in results if r[1] not in (200, 429))
    return {"n": len(results), "rps": len(results) / wall, "p50": q(0.50), "p90": q(0.90),
            "p99": q(0.99), "errors": errors, "busy": busy}


def latency_table(binary, think, per_client):
    rows, health = [], {}
    for mode, env in MODES.items():
        srv = Server(binary, env)
        try:
            time.sleep(1)
            before = srv.footprint()
            extra = {"idle_rss_kib": before["rss_kib"]}
            if mode != "cold":
                extra["jail_pss_kib"] = memory(srv)["pss"]
            for name, script in WORKLOADS.items():
                for clients in (1, 8):
                    srv.wait_ready()
                    count = per_client if clients == 1 else max(3, per_client // 4)
                    res, wall = drive(srv.port, script, clients, count=count, think=think)
                    rows.append((name, mode, clients, summarize(res, wall)))
            time.sleep(3)  # let the pool refill and the reaper finish
            after = srv.footprint()
            health[mode] = (before, after, extra)
        finally:
            srv.stop()
    return rows, health


def tier_table(binary, think, per_client):
    """p50 and p90 at concurrency 1 in each isolation tier (the restricted tier kills the run's
    uid and sweeps its files before answering: that is its extra cost)."""
    rows = {}
    for block, tier in enumerate(("full", "restricted")):
        for mode, env in MODES.items():
            srv = Server(binary, {**env, "PYEXEC_ISOLATION": tier,
                                  "PYEXEC_RUN_UID": str(600000 + 1024 * block)})
            try:
                got = srv.health()[1].get("tier")
                if got != tier:
                    raise SystemExit(f"asked for tier {tier}, the server runs {got}")
                for name in ("trivial", "pandas"):
                    srv.wait_ready()
                    res, wall = drive(srv.port, WORKLOADS[name], 1, count=per_client,
                                      think=think)
                    rows[(name, mode, tier)] = summarize(res, wall)
            finally:
                srv.stop()
    return rows


def saturation_table(binary, seconds):
    configs = [("cold", MODES["cold"]),
               ("ready, preload numpy+pandas", MODES["ready"]),
               ("ready, no preload", {"PYEXEC_POOL": "8", "PYEXEC_PRELOAD": "",
                                      "PYEXEC_ZYGOTE": "off"}),
               ("zygote, preload numpy+pandas", MODES["zygote"])]
    rows = []
    for label, env in configs:
        srv = Server(binary, env)
        try:
            for name in ("trivial", "pandas"):
                srv.wait_ready()
                res, wall = drive(srv.port, WORKLOADS[name], 8, seconds=seconds)
                rows.append((name, label, summarize(res, wall)))
        finally:
            srv.stop()
    return rows


def defaults_table(binary, requests, seconds):
    """The server on its defaults: one client in a loop with no pause (a notebook, an agent),
    and 8 clients with no pause, for the zygote, one-shot ready jails and cold runs; with the
    idle memory of each."""
    rows, mem = [], {}
    for label, env in DEFAULTS:
        srv = Server(binary, env, defaults=True)
        try:
            time.sleep(2)
            mem[label] = memory(srv)
            for name in ("trivial", "pandas"):
                srv.wait_ready()
                res, wall = drive(srv.port, WORKLOADS[name], 1, count=requests)
                rows.append((name, label, 1, summarize(res, wall)))
                srv.wait_ready()
                res, wall = drive(srv.port, WORKLOADS[name], 8, seconds=seconds)
                rows.append((name, label, 8, summarize(res, wall)))
        finally:
            srv.stop()
    return rows, mem


def print_defaults(binary, requests, seconds):
    rows, mem = defaults_table(binary, requests, seconds)
    print(f"\nServer on its defaults, no pause: 1 client x {requests} requests, then 8 clients "
          f"for {seconds:.0f} s")
    print(f"{'workload':<9} {'mode':<9} {'c':>2} {'n':>5} {'runs/s':>7} {'p50':>8} {'p99':>8} "
          f"{'errors':>6} {'429':>4}")
    for name, label, c, s in rows:
        print(f"{name:<9} {label:<9} {c:>2} {s['n']:>5} {s['rps']:>7.1f} {s['p50']:>8.1f} "
              f"{s['p99']:>8.1f} {s['errors']:>6} {s['busy']:>4}")
    print("Idle memory (PSS, MiB): the server and all under it; per ready run, the sum of its "
          "processes' PSS and their private memory (USS)")
    for label, m in mem.items():
        print(f"  {label:<9} total {m['total'] / 1024:6.1f}  ready runs {m['runs']}  per run "
              f"PSS {m['pss'] / 1024:5.1f}  USS {m['uss'] / 1024:5.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "build" / "pyexecd"))
    ap.add_argument("--think", type=float, default=0.25,
                    help="seconds each client waits between requests in the latency table")
    ap.add_argument("--requests", type=int, default=20,
                    help="requests per client at concurrency 1 (a quarter of it at 8)")
    ap.add_argument("--saturation-seconds", type=float, default=8)
    ap.add_argument("--loop-requests", type=int, default=60,
                    help="requests of the one client with no pause, on the defaults")
    ap.add_argument("--only-defaults", action="store_true",
                    help="print the defaults table (zygote, one-shot, cold) alone")
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        raise SystemExit(f"{args.binary} not found: run `make` first")
    t0 = time.monotonic()
    print(f"pyexec bench: {os.cpu_count()} CPUs, think time {args.think}s, "
          f"{args.requests} requests per client at c=1", flush=True)
    print_defaults(args.binary, args.loop_requests, args.saturation_seconds)
    if args.only_defaults:
        return 0
    rows, health = latency_table(args.binary, args.think, args.requests)
    print("\nLatency (ms, end to end on 127.0.0.1; closed loop with think time)")
    print(f"{'workload':<9} {'mode':<6} {'c':>2} {'n':>4} {'req/s':>7} {'p50':>8} {'p90':>8} "
          f"{'p99':>8} {'errors':>6} {'429':>4}")
    p50 = {}
    for name, mode, c, s in rows:
        p50[(name, mode, c)] = s["p50"]
        print(f"{name:<9} {mode:<6} {c:>2} {s['n']:>4} {s['rps']:>7.1f} {s['p50']:>8.1f} "
              f"{s['p90']:>8.1f} {s['p99']:>8.1f} {s['errors']:>6} {s['busy']:>4}")
    print("\nCold / one-shot ready / zygote p50 at concurrency 1")
    for name in WORKLOADS:
        cold, ready, zyg = (p50[(name, m, 1)] for m in ("cold", "ready", "zygote"))
        print(f"  {name:<9} {cold:8.1f} / {ready:6.1f} / {zyg:6.1f}")
    print("\nServer before and after each mode's load (after 3 s to settle)")
    for mode, (before, after, extra) in health.items():
        print(f"  {mode:<6} fds {before['fds']}->{after['fds']}  children "
              f"{before['children']}->{after['children']}  zombies {after['zombies']}  "
              f"RSS {before['rss_kib'] / 1024:.1f}->{after['rss_kib'] / 1024:.1f} MiB")
    print(f"  idle server RSS: {health['cold'][2]['idle_rss_kib'] / 1024:.1f} MiB; one ready "
          f"jail (PSS of nsjail + init + runner): "
          f"{health['ready'][2].get('jail_pss_kib', 0) / 1024:.1f} MiB; one zygote fork (init "
          f"+ runner): {health['zygote'][2].get('jail_pss_kib', 0) / 1024:.1f} MiB")
    print("\nIsolation tiers: p50 / p90 ms at concurrency 1 (errors)")
    tiers = tier_table(args.binary, args.think, args.requests)
    print(f"{'workload':<9} {'mode':<6} {'full':>20} {'restricted':>20}")
    for name in ("trivial", "pandas"):
        for mode in MODES:
            cells = [tiers[(name, mode, t)] for t in ("full", "restricted")]
            text = [f"{c['p50']:.1f} / {c['p90']:.1f} ({c['errors']})" for c in cells]
            print(f"{name:<9} {mode:<6} {text[0]:>20} {text[1]:>20}")
    print(f"\nSaturation: 8 clients, no think time, {args.saturation_seconds:.0f} s each")
    print(f"{'workload':<9} {'mode':<28} {'runs/s':>7} {'p50':>8} {'p99':>8} {'errors':>6} "
          f"{'429':>4}")
    for name, label, s in saturation_table(args.binary, args.saturation_seconds):
        print(f"{name:<9} {label:<28} {s['rps']:>7.1f} {s['p50']:>8.1f} {s['p99']:>8.1f} "
              f"{s['errors']:>6} {s['busy']:>4}")
    print(f"\nbench took {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
