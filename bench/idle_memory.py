#!/usr/bin/env python3
"""Idle memory: what touching memory costs after the process was idle, on this machine.

`sudo python3 bench/idle_memory.py` (root only for the warmed rows: /proc/PID/mem of
another process). A child process maps 8 MiB of anonymous memory, writes every page,
then repeatedly sleeps IDLE seconds and times one read of each 4 KiB page (2048 reads).
Rows:
- `alone`: nothing else touches the child's memory;
- `warmed`: this process reads one byte of each of the child's resident pages every
  200 ms through /proc/PID/mem (bench.warm_pages: the kernel's mapping, none of the
  child's code), as bench/failover.py's `settle0-warm` system does for enisync and the
  fake.
On a bare-metal host or a VM without the effect, the two rows are the same and the
figure hardly grows with IDLE. BENCHMARKS.md, "Idle memory", has this machine's table.
Measures, asserts nothing.
"""

import json
import mmap
import os
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SIZE = 8 << 20
IDLES = [0.01, 0.3, 1.0, 3.0]
ROUNDS = 5


def measure():
    """The child: one JSON line per (idle, round): milliseconds for the 2048 reads."""
    m = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, SIZE, bench.PAGE):
        m[off] = 1
    print("READY", flush=True)
    sys.stdin.readline()
    for idle in IDLES:
        for _ in range(ROUNDS):
            time.sleep(idle)
            t0 = time.perf_counter_ns()
            s = 0
            for off in range(0, SIZE, bench.PAGE):
                s += m[off]
            ms = (time.perf_counter_ns() - t0) / 1e6
            print(json.dumps({"idle": idle, "ms": ms}), flush=True)


def run(warm):
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--measure"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "READY"
    stop = threading.Event()
    if warm:
        def warmer():
            while not stop.is_set():
                bench.warm_pages(child.pid)
                stop.wait(0.2)
        threading.Thread(target=warmer, daemon=True).start()
    child.stdin.write("go\n")
    child.stdin.flush()
    rows = [json.loads(line) for line in child.stdout]
    stop.set()
    child.wait()
    return rows


def main():
    if sys.argv[1:] == ["--measure"]:
        measure()
        return
    results = {"alone": run(False), "warmed": run(True)}
    print(f"| read of each 4 KiB page of 8 MiB after IDLE s (median / max of {ROUNDS}, ms) | "
          + " | ".join(f"idle {i:g} s" for i in IDLES) + " |")
    print("|---|" + "---|" * len(IDLES))
    for name, rows in results.items():
        cells = []
        for idle in IDLES:
            xs = sorted(r["ms"] for r in rows if r["idle"] == idle)
            cells.append(f"{xs[len(xs) // 2]:.2f} / {xs[-1]:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nload average {open('/proc/loadavg').read().split()[:3]}; {os.cpu_count()} CPUs; "
          f"kernel {os.uname().release}")


if __name__ == "__main__":
    main()
