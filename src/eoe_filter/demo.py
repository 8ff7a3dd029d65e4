"""`eoe_filter demo`: a board and a switch in throwaway namespaces, two forwarders, real traffic.

board ns: forwarder -E -F on eth0, TAP tap-fwd 169.254.17.4/24 (as deployed on boards)
switch ns: the mirror image (op_code 1, downstream, MACs swapped), no -F, TAP tap-fwd 169.254.17.1/24
The two eth0 are the ends of one veth pair: every frame between the TAPs crosses it EOE-encapsulated.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .lab import Lab, in_netns

BOARD_IP, SWITCH_IP = "169.254.17.4", "169.254.17.1"
TAP = "tap-fwd"
READY = "service to net thread is waiting for data"
TRANSFER_BYTES = 32 * 1024 * 1024
TCP_PORT = 5201


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    proc: subprocess.Popen[str] | None = None
    output: str = ""


def main(argv: list[str]) -> int:
    if argv:
        print("usage: eoe_filter demo", file=sys.stderr)
        return 64
    try:
        with Lab("eoedemo") as lab:
            return _run(lab)
    except KeyboardInterrupt:
        print("interrupted; everything the demo made has been removed", file=sys.stderr)
        return 130


def _run(lab: Lab) -> int:
    step("creating namespaces 'board' and 'switch' joined by a veth pair (eth0 <-> eth0)")
    board = Node("board", lab.netns("board"), BOARD_IP)
    switch = Node("switch", lab.netns("switch"), SWITCH_IP)
    lab.veth(board.ns, "eth0", switch.ns, "eth0")
    step("starting the switch-side forwarder: -E, op_code 1, downstream, MACs swapped")
    _start(lab, switch, ["--op-code", "1", "--downstream", "1",
                         "--dmac", "06:00:00:00:00:78", "--smac", "06:00:00:00:00:f8"])
    step("starting the board forwarder: -E -F (only the switch's op_code-1 frames reach the TAP)")
    _start(lab, board, ["-F"])
    for node in (board, switch):
        lab.run(node.ns, ["ip", "addr", "add", f"{node.ip}/24", "dev", TAP], check=True)
    step(f"ping {SWITCH_IP} from the board, 20 times")
    ping = _ping(lab, board.ns, SWITCH_IP)
    step(f"TCP transfer of {TRANSFER_BYTES >> 20} MiB from the board to the switch")
    mbit = _tcp_transfer(board.ns, switch.ns)
    step("stopping both forwarders (SIGTERM) and collecting their counters")
    for node in (board, switch):
        _stop(node)
    _summary(ping, mbit, board, switch)
    ok = ping is not None and ping[0] == 0 and mbit > 0
    step("removing namespaces" + ("" if ok else " (the demo FAILED: see above)"))
    return 0 if ok else 1


def _start(lab: Lab, node: Node, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "eoe_filter", "-n", "eth0", "-t", TAP, "-E", *extra]
    node.proc = lab.start(node.ns, cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 15
    for line in node.proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        print(f"    [{node.name}] {line}", end="", flush=True)
        if READY in line or time.monotonic() > deadline:
            break
    else:
        raise SystemExit(f"the {node.name} forwarder did not start:\n{''.join(lines)}")
    node.output = "".join(lines)


def _stop(node: Node) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    rest, _ = node.proc.communicate(timeout=10)
    node.output += rest


def _ping(lab: Lab, ns: str, target: str) -> tuple[float, float, float, float] | None:
    """(loss %, min, avg, max ms), or None without a ping binary."""
    if shutil.which("ping") is None:
        print("    ping is not installed (Debian: iputils-ping); skipping round-trip times")
        return None
    out = lab.run(ns, ["ping", "-c", "20", "-i", "0.05", "-W", "1", target]).stdout
    loss = re.search(r"([\d.]+)% packet loss", out)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", out)
    if not loss or not rtt:
        print(out)
        return None
    return float(loss.group(1)), float(rtt.group(1)), float(rtt.group(2)), float(rtt.group(3))


def _tcp_transfer(client_ns: str, server_ns: str) -> float:
    """Mbit/s of one TCP stream between the TAPs; sockets live in their namespaces."""
    with in_netns(server_ns):
        server = socket.create_server((SWITCH_IP, TCP_PORT))
    received = 0

    def sink() -> None:
        nonlocal received
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received += len(chunk)

    thread = threading.Thread(target=sink)
    thread.start()
    with in_netns(client_ns):
        client = socket.create_connection((SWITCH_IP, TCP_PORT), timeout=10)
    block = bytes(1 << 16)
    t0 = time.monotonic()
    with client:
        for _ in range(TRANSFER_BYTES // len(block)):
            client.sendall(block)
    thread.join(30)
    elapsed = time.monotonic() - t0
    server.close()
    return received * 8 / elapsed / 1e6 if received == TRANSFER_BYTES else 0.0


def _summary(ping: tuple[float, float, float, float] | None, mbit: float, *nodes: Node) -> None:
    print()
    print("  result                      value")
    print("  --------------------------  ------------------------------")
    if ping is not None:
        print(f"  ping loss                   {ping[0]:g} %")
        print(f"  round trip min/avg/max      {ping[1]:.3f} / {ping[2]:.3f} / {ping[3]:.3f} ms")
    print(f"  TCP throughput              {mbit:.1f} Mbit/s" if mbit else "  TCP transfer                FAILED")
    for node in nodes:
        block = node.output[node.output.find("counters:"):] if "counters:" in node.output else "(none)"
        print(f"\n  {node.name} forwarder {block}".rstrip())
    print()
