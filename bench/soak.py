"""pyexec soak: many runs, legitimate and hostile mixed, against one server; then what the
server holds. Nothing may grow beyond noise and no answer may be other than expected.

    make soak             (or: /usr/bin/python3 bench/soak.py --runs 10000 --clients 4)
"""

import argparse
import http.client
import json
import random
import threading
import time
from collections import Counter

from bench import ROOT, Server

FORGE = ("import os\ndef main():\n    for fd in range(21):\n        try:\n"
         "            os.write(fd, b'READY\\n{\"status\":\"ok\"}\\n\"forged\"')\n"
         "        except OSError:\n            pass\n    return 'real'\n")

# kind: (weight, request body or script, timeout, expected status, expected result/error)
KINDS = {
    "ok": (40, "def main():\n    return {'ok': True}\n", None, 200, {"ok": True}),
    "print": (10, "def main():\n    print('hello')\n    return 1\n", None, 200, 1),
    "exception": (10, "def main():\n    return 1 / 0\n", None, 422, "exception"),
    "syntax": (5, "def main(:\n", None, 422, "syntax_error"),
    "not_json": (5, "def main():\n    return {1, 2}\n", None, 422, "result_not_json"),
    "bad_request": (5, b'{"script": ', None, 400, "invalid_json"),
    "timeout": (3, "import time\ndef main():\n    time.sleep(5)\n", 0.3, 422, "timeout"),
    "memory": (3, "def main():\n    a = []\n    while True:\n        a.append(' ' * 10**6)\n",
               None, 422, "memory_limit"),
    "forkbomb": (3, "import os\ndef main():\n    n = 0\n    while True:\n        try:\n"
                    "            if os.fork() == 0:\n                os._exit(0)\n"
                    "            n += 1\n        except OSError:\n            return 'capped'\n"
                    "        if n > 200:\n            return 'capped'\n",
                 None, 200, "capped"),
    "kill_self": (3, "import os\ndef main():\n    os.kill(os.getpid(), 9)\n", None, 422,
                  "killed"),
    "exit": (3, "import os\ndef main():\n    os._exit(3)\n", None, 422, "exception"),
    "flood": (3, "def main():\n    print('x' * 2000000)\n    return 2\n", None, 200, 2),
    "forge": (3, FORGE, None, 200, "real"),
    "too_large": (2, "def main():\n    return 'y' * 2000000\n", None, 422, "result_too_large"),
    "deep": (2, "def main():\n    a = []\n    for _ in range(100000):\n        a = [a]\n"
                "    return a\n", None, 422, "result_not_json"),
}


def body_of(kind):
    _, script, timeout, _, _ = KINDS[kind]
    if isinstance(script, bytes):
        return script
    payload = {"script": script}
    if timeout:
        payload["timeout"] = timeout
    return json.dumps(payload).encode()


def check(kind, status, data):
    _, _, _, want_status, want = KINDS[kind]
    if status != want_status:
        return False
    body = json.loads(data)
    if status == 200:
        return set(body) == {"result", "stdout"} and body["result"] == want
    return body.get("error") == want and bool(body.get("message"))


def client(port, kinds, results, lock):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for kind in kinds:
        try:
            conn.request("POST", "/execute", body_of(kind), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        except (OSError, http.client.HTTPException) as exc:
            status, data = -1, str(exc).encode()
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        ok = status != -1 and check(kind, status, data)
        with lock:
            results.append((kind, ok, status, data[:300]))
    conn.close()


def run_all(port, plan, clients, results, lock):
    threads = [threading.Thread(target=client, args=(port, plan[i::clients], results, lock))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "build" / "pyexecd"))
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    names = list(KINDS)
    plan = rng.choices(names, weights=[KINDS[k][0] for k in names], k=args.runs)
    srv = Server(args.binary, {"PYEXEC_CONCURRENCY": "4", "PYEXEC_QUEUE": "16",
                               "PYEXEC_POOL": "4", "PYEXEC_PRELOAD": ""})
    try:
        time.sleep(1)
        idle = srv.footprint()
        results, lock = [], threading.Lock()
        # A warm-up first: the allocator's per-thread arenas grow to their working size once.
        run_all(srv.port, names * 20, args.clients, [], lock)
        time.sleep(3)
        before = srv.footprint()
        t0 = time.monotonic()
        run_all(srv.port, plan, args.clients, results, lock)
        took = time.monotonic() - t0
        time.sleep(3)  # the pool refills and the reaper finishes
        after = srv.footprint()
        status, health = srv.health()
    finally:
        srv.stop()
    bad = [r for r in results if not r[1]]
    print(f"pyexec soak: {len(results)} runs, {args.clients} clients, {took:.0f} s "
          f"({len(results) / took:.1f} runs/s)")
    print("runs by kind: " + ", ".join(f"{k} {n}" for k, n in Counter(plan).most_common()))
    print(f"unexpected answers: {len(bad)}")
    for kind, _, st, data in bad[:10]:
        print(f"  {kind}: {st} {data!r}")
    print(f"idle server: fds {idle['fds']}, RSS {idle['rss_kib'] / 1024:.1f} MiB; the "
          f"figures below are after a warm-up of {len(names) * 20} runs")
    print(f"server: fds {before['fds']} -> {after['fds']}, children {before['children']} -> "
          f"{after['children']}, zombies {after['zombies']}, RSS "
          f"{before['rss_kib'] / 1024:.1f} -> {after['rss_kib'] / 1024:.1f} MiB "
          f"({(after['rss_kib'] / before['rss_kib'] - 1) * 100:+.0f}%)")
    print(f"healthz after: {status} {health}")
    flat = (after["fds"] <= before["fds"] and after["children"] <= before["children"]
            and after["zombies"] == 0)
    print("verdict: " + ("PASS" if not bad and flat and status == 200 else "FAIL"))
    return 0 if not bad and flat and status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
