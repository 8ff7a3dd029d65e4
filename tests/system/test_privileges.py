"""Least privilege and opt-in acceptance: --user, capabilities, --accept-dmac/--accept-vid."""

from __future__ import annotations

import json
import pwd
import sys
import time

from .conftest import KERNEL_READY, UNDER_EBPF, USERSPACE_READY, EoeLab, receive, receive_all
from .frames import eoe_frame, inner_frame
from .test_reliability import flows_within

NET_ADMIN_AND_RAW = (1 << 12) | (1 << 13)
CAP_BPF = 1 << 39


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def process_tree(pid: int) -> list[int]:
    """The forwarder and every process under it (workers of a multi-process datapath)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return tree


def assert_only(pid: int, user: pwd.struct_passwd, caps: int) -> None:
    """`pid` and every process under it run as `user` with exactly `caps`, and cannot gain more."""
    for p in process_tree(pid):
        st = status(p)
        assert st["Uid"].split() == [str(user.pw_uid)] * 4, (p, st["Uid"])
        assert st["Gid"].split() == [str(user.pw_gid)] * 4, (p, st["Gid"])
        assert int(st["CapEff"], 16) == caps, (p, st["CapEff"])
        assert int(st["CapPrm"], 16) == caps, (p, st["CapPrm"])
        assert int(st["CapBnd"], 16) == caps, (p, st["CapBnd"])
        assert int(st["CapInh"], 16) == 0 and int(st.get("CapAmb", "0"), 16) == 0


def test_user_keeps_only_net_admin_and_net_raw_in_every_process(eoe_lab: EoeLab):
    nobody = pwd.getpwnam("nobody")
    fwd = eoe_lab.start("--user", "nobody")
    assert_only(fwd.proc.pid, nobody, NET_ADMIN_AND_RAW | (CAP_BPF if UNDER_EBPF else 0))
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(100)
    peer.send(eoe_frame(inner))
    assert receive(tap) == inner
    eoe_lab.ip("link", "del", "tap0")  # re-creating the TAP needs only CAP_NET_ADMIN
    deadline = time.monotonic() + 3
    while eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0:
        assert time.monotonic() < deadline, fwd.output
        time.sleep(0.05)
    assert fwd.stop() == 0, fwd.output
    net = json.loads(eoe_lab.ip("-j", "link", "show", "net0"))[0]
    assert "NOARP" not in net["flags"]


def test_user_with_auto_keeps_cap_bpf_only_when_it_chose_ebpf(eoe_lab: EoeLab):
    nobody = pwd.getpwnam("nobody")
    fwd = eoe_lab.start("--user", "nobody", "--datapath", "auto", ready=False)
    fwd.wait_for(KERNEL_READY)
    assert_only(fwd.proc.pid, nobody, NET_ADMIN_AND_RAW | CAP_BPF)
    assert fwd.stop() == 0, fwd.output
    fwd = eoe_lab.start("--user", "nobody", "--datapath", "auto", "-dd", ready=False)  # -dd: userspace
    fwd.wait_for(USERSPACE_READY)
    assert "datapath auto: fast, because eBPF datapath unavailable: -dd hex dumps need every frame in userspace" \
        in fwd.lines
    assert_only(fwd.proc.pid, nobody, NET_ADMIN_AND_RAW)
    assert fwd.stop() == 0, fwd.output


def test_user_with_ebpf_reattaches_after_the_interfaces_are_recreated(eoe_lab: EoeLab):
    """What CAP_BPF is kept for: loading the programs again for a new network interface and a new TAP."""
    fwd = eoe_lab.start("--user", "nobody", "--datapath", "ebpf", ready=False)
    fwd.wait_for(KERNEL_READY)
    assert_only(fwd.proc.pid, pwd.getpwnam("nobody"), NET_ADMIN_AND_RAW | CAP_BPF)
    flows_within(eoe_lab)
    eoe_lab.recreate_network()
    fwd.wait_for("kernel datapath re-attached (eBPF)")
    flows_within(eoe_lab, 2.0)
    eoe_lab.ip("link", "del", "tap0")
    fwd.wait_for("tap0 is back; forwarding resumed")
    flows_within(eoe_lab, 2.0)
    assert fwd.proc.poll() is None
    assert fwd.stop() == 0, fwd.output


def test_without_privileges_one_clear_line(eoe_lab: EoeLab):
    # uid 0 without any capability: as powerless here as any user, and still able to read the code
    out = eoe_lab.lab.run(eoe_lab.ns, ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable,
                                       "-m", "eoe_filter", "-n", "net0", "-t", "tap0", "-E"])
    assert out.returncode == 77
    assert out.stderr.strip().splitlines() == [
        "eoe_filter: missing CAP_NET_ADMIN and CAP_NET_RAW: run as root, or grant CAP_NET_ADMIN and "
        "CAP_NET_RAW to eoe_filter"]


def test_accept_dmac_and_vid_restrict_what_reaches_the_tap(eoe_lab: EoeLab):
    fwd = eoe_lab.start("--accept-dmac", "06:00:00:00:00:78,06:00:00:00:00:79", "--accept-vid", "4094")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    good = inner_frame(100, seed=1)
    peer.send(eoe_frame(inner_frame(100, seed=2), dst="02:00:00:00:00:99"))
    peer.send(eoe_frame(inner_frame(100, seed=3), vid=100))
    peer.send(eoe_frame(good))
    peer.send(eoe_frame(inner_frame(100, seed=4), dst="06:00:00:00:00:79"))
    assert receive_all(tap) == [good, inner_frame(100, seed=4)]
    assert fwd.stop() == 0, fwd.output
    assert "filtered 2" in fwd.output
