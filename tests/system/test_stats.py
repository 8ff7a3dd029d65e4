"""`eoe_filter stats`: live counters over the control endpoint, per namespace, nothing stale."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from .conftest import UNDER_EBPF, EoeLab, receive
from .frames import eoe_frame, inner_frame


def stats(eoe_lab: EoeLab, *args: str) -> subprocess.CompletedProcess[str]:
    return eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats", *args])


def test_counters_move_when_traffic_flows(eoe_lab: EoeLab):
    fwd = eoe_lab.start("-F")
    before = json.loads(stats(eoe_lab, "tap0", "--json").stdout)
    assert before["pid"] == fwd.proc.pid and before["relay"] == "eoe" and before["network"] == "net0"
    assert before["counters"]["net_to_service"]["frames"] == 0
    # A socket filter's drops are not counted: None, not a false 0. The kernel datapath counts them.
    assert before["counters"]["net_to_service"]["drops"]["filtered"] == (0 if UNDER_EBPF else None)
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    for _ in range(5):
        peer.send(eoe_frame(inner_frame(100)))
        assert receive(tap) is not None
    peer.send(eoe_frame(inner_frame(100), op_code=8))  # refused by -F
    time.sleep(0.2)  # the kernel datapath's counters reach `stats` up to 0.1 s late
    after = json.loads(stats(eoe_lab, "tap0", "--json").stdout)
    assert after["counters"]["net_to_service"] | {"drops": None} == {"frames": 5, "bytes": 500, "drops": None}
    assert after["counters"]["net_to_service"]["drops"]["filtered"] == (1 if UNDER_EBPF else None)
    assert after["uptime"] > before["uptime"]
    table = stats(eoe_lab, "tap0").stdout
    assert "tap0: relay eoe, network net0" in table
    assert ("filtered 1" if UNDER_EBPF else "filtered not counted") in table, table
    assert "net -> service" in table and "500" in table


def test_listing_and_a_killed_forwarder_is_not_listed(eoe_lab: EoeLab):
    eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "add", "net1", "type", "veth", "peer", "name", "peer1"])
    fwd0 = eoe_lab.start()
    fwd1 = eoe_lab.start_on("net1", "tap1")
    listing = json.loads(stats(eoe_lab, "--json").stdout)
    assert sorted(s["service"] for s in listing) == ["tap0", "tap1"]
    fwd1.signal(signal.SIGKILL)
    fwd1.proc.wait(5)
    listing = json.loads(stats(eoe_lab, "--json").stdout)
    assert [s["service"] for s in listing] == ["tap0"]
    assert "tap0" in stats(eoe_lab).stdout and "tap1" not in stats(eoe_lab).stdout
    missing = stats(eoe_lab, "tap1")
    assert missing.returncode == 1 and "no forwarder is running for tap1" in missing.stderr
    assert fwd0.stop() == 0


def test_other_namespaces_do_not_see_it(eoe_lab: EoeLab):
    eoe_lab.start()
    other = eoe_lab.lab.netns("other")
    out = eoe_lab.lab.run(other, [sys.executable, "-m", "eoe_filter", "stats", "--json"])
    assert json.loads(out.stdout) == []


def test_watch_shows_rates(eoe_lab: EoeLab):
    eoe_lab.start()
    watch = subprocess.Popen(eoe_lab.lab.command(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats",
                                                              "tap0", "--watch"]),
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
    finally:
        watch.send_signal(signal.SIGINT)
        out, _ = watch.communicate(5)
    assert "frames/s" in out and out.count("tap0: relay eoe") >= 2


def test_only_root_may_read_the_counters(eoe_lab: EoeLab):
    import os
    import pwd
    import socket

    from eoe_filter.control import service_endpoint
    from eoe_filter.lab import in_netns

    eoe_lab.start()
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    with in_netns(eoe_lab.ns):
        pid = os.fork()
        if pid == 0:  # the child: become nobody, then ask
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(b"\0" + service_endpoint("tap0").encode())
                    os.write(write_end, sock.recv(4096))
            finally:
                os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 4096)
    os.waitpid(pid, 0)
    os.close(read_end)
    assert json.loads(answer) == {"error": "permission denied: only root may read the counters"}
    assert "counters" in json.loads(stats(eoe_lab, "tap0", "--json").stdout)
