"""`eoe_filter stats [SERVICE] [--watch] [--json]`: the live counters of running forwarders.

Only the forwarders of the current network namespace are visible (run it
under `ip netns exec NS` for another one), as their endpoints are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import control
from .wire.drops import DropReason

DIRECTIONS = (("net_to_service", "net -> service"), ("service_to_net", "service -> net"))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="eoe_filter stats", description=__doc__.splitlines()[0])
    p.add_argument("service", nargs="?", help="the forwarder's service interface (TAP); all when omitted")
    p.add_argument("--watch", action="store_true", help="refresh once a second, with rates")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    try:
        if args.watch:
            return _watch(args.service)
        snaps = _collect(args.service)
    except PermissionError as e:
        print(f"eoe_filter stats: {e}", file=sys.stderr)
        return 77
    except KeyboardInterrupt:
        return 0
    if args.service and not snaps:
        print(f"eoe_filter stats: no forwarder is running for {args.service} in this network namespace",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snaps[0] if args.service else snaps, indent=2))
    elif args.service:
        print(render_one(snaps[0]))
    else:
        print(render_list(snaps))
    return 0


def _collect(service: str | None) -> list[dict]:
    names = [service] if service else control.running_services()
    return [s for s in (control.query(n) for n in names) if s is not None]


def _watch(service: str | None) -> int:
    previous: dict[str, dict] = {}
    while True:
        snaps = _collect(service)
        out = []
        for snap in snaps:
            rates = _rates(previous.get(snap["service"]), snap)
            out.append(render_one(snap, rates))
            previous[snap["service"]] = snap
        print("\033[H\033[J" + ("\n\n".join(out) or "no forwarder running in this network namespace"), flush=True)
        time.sleep(1.0)


def _rates(before: dict | None, now: dict) -> dict[str, tuple[float, float]] | None:
    if before is None or before.get("pid") != now.get("pid"):
        return None
    dt = now["time"] - before["time"]
    if dt <= 0:
        return None
    rates = {}
    for key, _ in DIRECTIONS:
        a, b = before["counters"][key], now["counters"][key]
        rates[key] = ((b["frames"] - a["frames"]) / dt, (b["bytes"] - a["bytes"]) / dt)
    return rates


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def render_one(snap: dict, rates: dict[str, tuple[float, float]] | None = None) -> str:
    lines = [
        f"{snap['service']}: relay {snap['relay']}, network {snap['network']}, datapath {snap['datapath']}"
        + (f" (auto: {snap['datapath_choice']})" if snap.get("datapath_choice") else "")
        + f"{', filter on' if snap['filter'] else ''}, pid {snap['pid']}, up {_duration(snap['uptime'])}",
        f"  {'direction':<16}{'frames':>14}{'bytes':>16}" + (f"{'frames/s':>12}{'bytes/s':>14}" if rates else ""),
    ]
    for key, label in DIRECTIONS:
        c = snap["counters"][key]
        row = f"  {label:<16}{c['frames']:>14}{c['bytes']:>16}"
        if rates:
            fps, bps = rates[key]
            row += f"{fps:>12.0f}{bps:>14.0f}"
        lines.append(row)
    lines.append("  drops:")
    for key, label in DIRECTIONS:
        drops = snap["counters"][key]["drops"]
        shown = [f"{DropReason[r.upper()].label} {'not counted' if n is None else n}"
                 for r, n in drops.items() if n != 0]
        lines.append(f"    {label:<16}{', '.join(shown) or 'none'}")
    for k, worker in enumerate(snap.get("workers", [])):  # --workers N: each pair's share of the totals
        lines.append(f"  worker {k}: " + ", ".join(f"{label} {worker[key]['frames']} frames"
                                                   for key, label in DIRECTIONS))
    return "\n".join(lines)


def render_list(snaps: list[dict]) -> str:
    if not snaps:
        return "no forwarder running in this network namespace"
    head = f"{'service':<16}{'network':<16}{'relay':<7}{'datapath':<10}{'pid':>8}{'uptime':>12}" \
           f"{'net->svc':>12}{'svc->net':>12}{'drops':>10}"
    rows = [head]
    for s in snaps:
        c = s["counters"]
        drops = sum(n or 0 for key, _ in DIRECTIONS for n in c[key]["drops"].values())
        rows.append(f"{s['service']:<16}{s['network']:<16}{s['relay']:<7}{s['datapath']:<10}{s['pid']:>8}"
                    f"{_duration(s['uptime']):>12}{c['net_to_service']['frames']:>12}"
                    f"{c['service_to_net']['frames']:>12}{drops:>10}")
    return "\n".join(rows)
