#!/usr/bin/env python3
"""Start-up time and idle memory per datapath: from exec to "TAP up and forwarding", and PSS when idle.

    sudo .venv/bin/python scripts/startup.py [--runs 5]

"Forwarding" is the last start-up line: the original's "service to net
thread is waiting" for the userspace datapaths, "kernel datapath attached"
for eBPF. Memory is the proportional set size (PSS) of the forwarder's
process tree after 1 s idle: the fast datapath's workers share most of the
parent's pages, which a sum of VmRSS would count three times. Everything
runs in a throw-away namespace.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from eoe_filter.lab import Lab

READY = {"simple": "service to net thread is waiting", "fast": "service to net thread is waiting",
         "ebpf": "kernel datapath attached"}


def pss_kib(pid: int) -> int:
    """PSS of `pid` and every process under it."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with open(f"/proc/{p}/smaps_rollup") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    runs = p.parse_args().runs
    with Lab("efstart") as lab:
        ns = lab.netns("dut")
        lab.veth(ns, "net0", ns, "peer0")
        for datapath, ready in READY.items():
            times, pss = [], []
            for _ in range(runs):
                t0 = time.monotonic()
                proc = lab.start(ns, [sys.executable, "-m", "eoe_filter", "-n", "net0", "-t", "tapx", "-E",
                                      "--datapath", datapath], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
                assert proc.stdout is not None
                for line in proc.stdout:
                    if ready in line:
                        break
                times.append(time.monotonic() - t0)
                time.sleep(1.0)
                pss.append(pss_kib(proc.pid))
                proc.terminate()
                proc.wait(10)
            print(f"{datapath:7} start to forwarding: median {statistics.median(times) * 1000:.0f} ms "
                  f"(min {min(times) * 1000:.0f}); idle PSS {statistics.median(pss) / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
