"""`eoe_filter doctor`'s decisions on fake links, /proc texts and snapshots: no root, no kernel."""

from __future__ import annotations

import dataclasses

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from eoe_filter import doctor
from eoe_filter.doctor import FAIL, INFO, OK, Facts, Holder, TunDevice
from eoe_filter.link.ethtool import Features
from eoe_filter.link.netif import IFF_UP, Link
from eoe_filter.wire.drops import DropReason

FWD_PID = 4242
VETH = Features(active=frozenset({"rx-vlan-hw-parse"}), changeable=frozenset({"rx-vlan-hw-parse"}))


def link(name: str, *, up: bool = True, carrier: bool = True, mtu: int = 1500, kind: str | None = "veth",
         tun_type: int | None = None, persist: bool = False, multi_queue: bool = False, index: int = 2) -> Link:
    return Link(name=name, index=index, flags=IFF_UP if up else 0, mtu=mtu, kind=kind, carrier=carrier,
                tun_type=tun_type, tun_multi_queue=multi_queue, tun_persist=persist)


def tap(**kw: object) -> Link:
    return link("tap0", **{"kind": "tun", "tun_type": 2, "mtu": 1482, "index": 3, **kw})  # type: ignore[arg-type]


def snapshot(drops: dict[str, int | None] | None = None, *, relay: str = "eoe", network: str = "net0",
             service: str = "tap0", pid: int = FWD_PID) -> dict:
    counted = {r.name.lower(): 0 for r in DropReason} | (drops or {})
    direction = {"frames": 10, "bytes": 1000, "drops": counted}
    return {"pid": pid, "relay": relay, "network": network, "service": service, "datapath": "simple",
            "filter": False, "uptime": 62.5, "counters": {"net_to_service": direction,
                                                          "service_to_net": {**direction, "drops": {}}}}


def healthy(**changes: object) -> Facts:
    """A running forwarder on net0 with its TAP up: nothing to complain about."""
    facts = Facts(relay="eoe", network="net0", service="tap0",
                  tun=TunDevice(exists=True, char_device=True, open_error=None),
                  net=link("net0"), svc=tap(), features={"net0": VETH}, vlans={"net0": frozenset()},
                  holders=(Holder(FWD_PID, "python3"),), snapshot=snapshot(), later=snapshot())
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def idle(**changes: object) -> Facts:
    """No forwarder running and no TAP yet."""
    return healthy(**{"svc": None, "holders": (), "snapshot": None, "later": None, **changes})


def levels(findings: list[doctor.Finding]) -> list[str]:
    return [f.level for f in findings]


def fails(facts: Facts) -> list[str]:
    return [f.text for f in doctor.diagnose(facts) if f.level == FAIL]


def the_fail(facts: Facts) -> str:
    found = fails(facts)
    assert len(found) == 1, found
    return found[0]


def test_healthy_running_forwarder_has_no_problem():
    findings = doctor.diagnose(healthy())
    assert FAIL not in levels(findings)
    assert any(f.level == OK and "attached by eoe_filter pid 4242" in f.text for f in findings)
    assert any(f.level == INFO and "not persistent" in f.text for f in findings)


def test_checks_run_in_the_order_the_forwarder_trips_over_them():
    names = [c.name for c in doctor.CHECKS]
    assert names.index("tun") < names.index("privileges") < names.index("network") < names.index("service") \
        < names.index("tap mtu") < names.index("nic") < names.index("forwarder")
    text = doctor.render(doctor.diagnose(idle(tun=TunDevice(False, False, None), net=None)))
    assert text.index("/dev/net/tun") < text.index("net0 does not exist") < text.index("no eoe_filter is running")


def test_render_is_plain_one_line_per_finding():
    text = doctor.render([doctor.ok("a"), doctor.fail("b"), doctor.info("c")])
    assert text.splitlines() == ["ok    a", "FAIL  b", "info  c"]
    assert "\033" not in doctor.render(doctor.diagnose(idle()))


@pytest.mark.parametrize("tun, words", [
    (TunDevice(exists=False, char_device=False, open_error=None), ["does not exist", "modprobe tun"]),
    (TunDevice(exists=True, char_device=False, open_error=None), ["not the tun character device", "mknod"]),
    (TunDevice(exists=True, char_device=True, open_error="Permission denied (EACCES)"),
     ["not accessible", "EACCES", "nodev"]),
])
def test_tun_problems(tun: TunDevice, words: list[str]):
    text = the_fail(healthy(tun=tun))
    assert text.startswith("/dev/net/tun") and "fix:" in text
    assert all(w in text for w in words)


def test_tun_is_not_checked_for_the_dhcp_relay():
    facts = healthy(relay="dhcp", tun=None, svc=link("svc0", index=4), features={"net0": VETH, "svc0": VETH},
                    service="svc0", snapshot=snapshot(relay="dhcp", service="svc0"),
                    later=snapshot(relay="dhcp", service="svc0"))
    assert fails(facts) == []
    assert "tun" not in doctor.render(doctor.diagnose(facts))


def test_missing_capabilities():
    none = 0x1FFFFFFFFFF & ~(1 << doctor.CAP_NET_ADMIN | 1 << doctor.CAP_NET_RAW)
    text = the_fail(healthy(cap_eff=none))
    assert "CAP_NET_ADMIN and CAP_NET_RAW missing" in text and "AmbientCapabilities" in text
    assert "CAP_NET_RAW missing" in the_fail(healthy(cap_eff=1 << doctor.CAP_NET_ADMIN))
    assert "CAP_NET_ADMIN missing" in the_fail(healthy(cap_eff=1 << doctor.CAP_NET_RAW))


def test_dhcp_relay_needs_only_cap_net_raw():
    facts = healthy(relay="dhcp", cap_eff=1 << doctor.CAP_NET_RAW)
    found = doctor.check_privileges(facts)
    assert levels(found) == [INFO] and "CAP_NET_ADMIN missing" in found[0].text


@pytest.mark.parametrize("net, words", [
    (None, ["network interface net0 does not exist", "69"]),
    (link("net0", up=False), ["net0 is down", "fix: ip link set net0 up"]),
    (link("net0", carrier=False), ["net0 has no carrier", "fix:"]),
])
def test_network_problems(net: Link | None, words: list[str]):
    found = doctor.check_network(healthy(net=net))
    assert levels(found) == [FAIL]
    assert all(w in found[0].text for w in words)


def test_network_used_by_another_forwarder():
    other = snapshot(service="tap1", pid=77)
    found = doctor.check_network_in_use(idle(others=(other,), svc=tap(persist=True)))
    assert levels(found) == [FAIL]
    text = found[0].text
    assert "net0 is already forwarded by eoe_filter pid 77 for tap1" in text and "fix: stop pid 77" in text
    assert doctor.check_network_in_use(healthy(others=(snapshot(network="net9", service="tap1"),)))[0].level == OK


@pytest.mark.parametrize("svc, words", [
    (None, ["service interface svc0 does not exist"]),
    (link("svc0", up=False), ["svc0 is down", "ip link set svc0 up"]),
    (link("svc0", carrier=False), ["svc0 has no carrier"]),
])
def test_dhcp_service_interface_problems(svc: Link | None, words: list[str]):
    found = doctor.check_service(healthy(relay="dhcp", service="svc0", svc=svc))
    assert levels(found) == [FAIL] and all(w in found[0].text for w in words)


def test_tap_missing_without_forwarder():
    found = doctor.check_tap(idle())
    assert levels(found) == [FAIL]
    assert "TAP tap0 does not exist" in found[0].text and "start eoe_filter -n net0 -t tap0 -E" in found[0].text


def test_tap_deleted_under_a_running_forwarder():
    text = doctor.check_tap(healthy(svc=None, holders=()))[0].text
    assert "although eoe_filter pid 4242 serves it" in text and "restart" in text


def test_tap_down_names_eio_and_the_fix():
    text = the_fail(healthy(svc=tap(up=False)))
    assert text == ("TAP tap0 is down: writes to it fail with EIO, every frame from net0 is dropped; "
                    "fix: ip link set tap0 up (eoe_filter brings it up itself when it starts)")


@pytest.mark.parametrize("svc, words", [
    (link("tap0", kind="veth"), ["not a TAP device (kind veth)", "ip link del tap0"]),
    (link("tap0", kind="tun", tun_type=1), ["not a TAP device (a TUN)"]),
])
def test_not_a_usable_tap(svc: Link, words: list[str]):
    found = doctor.check_tap(healthy(svc=svc))
    assert levels(found) == [FAIL] and all(w in found[0].text for w in words)


def test_a_multi_queue_tap_is_for_workers():
    found = doctor.check_tap(idle(svc=tap(persist=True, multi_queue=True)))
    assert levels(found) == [FAIL] and "only with --workers N" in found[0].text
    found = doctor.check_tap(healthy(svc=tap(multi_queue=True)))
    assert FAIL not in levels(found) and "runs with --workers" in found[0].text


def test_tap_attached_by_another_process_while_no_forwarder_runs():
    found = doctor.check_tap(idle(svc=tap(persist=True), holders=(Holder(99, "openvpn"),)))
    assert levels(found) == [FAIL]
    assert "attached by another process: pid 99 (openvpn)" in found[0].text and "EBUSY" in found[0].text


def test_tap_not_persistent_and_held_by_a_stranger_is_two_problems():
    found = doctor.check_tap(idle(svc=tap(), holders=(Holder(99, "sleeper"),)))
    assert levels(found) == [FAIL, FAIL]
    assert "attached by another process" in found[0].text
    assert "not persistent and no eoe_filter holds it: it vanishes when pid 99 (sleeper) closes it" in found[1].text


def test_free_persistent_tap_is_fine_before_start_even_down():
    found = doctor.check_tap(idle(svc=tap(persist=True)))
    assert levels(found) == [OK] and "persistent and free" in found[0].text
    found = doctor.check_tap(idle(svc=tap(persist=True, up=False)))
    assert levels(found) == [OK, INFO] and "eoe_filter brings it up when it starts" in found[1].text


def test_the_forwarders_own_tap_and_its_workers_are_not_strangers():
    worker = Holder(5000, "python3", ancestors=(FWD_PID, 1))
    found = doctor.check_tap(healthy(svc=tap(persist=True), holders=(Holder(FWD_PID, "python3"), worker)))
    assert levels(found) == [OK]


def test_a_stranger_sharing_the_forwarders_tap():
    found = doctor.check_tap(healthy(holders=(Holder(FWD_PID, "python3"), Holder(123, "cat"))))
    assert FAIL in levels(found)
    assert "also held by pid 123 (cat), not by eoe_filter pid 4242" in found[0].text


def test_a_forwarder_for_another_network_does_not_own_the_tap():
    facts = healthy(snapshot=snapshot(network="net9"), later=snapshot(network="net9"))
    found = fails(facts)
    assert any("forwards to net9, not net0" in t for t in found)
    assert any("attached by another process: pid 4242" in t for t in found)


def test_tap_mtu_larger_than_network_mtu_minus_18():
    text = the_fail(healthy(svc=tap(mtu=1500)))
    assert "TAP tap0 MTU 1500 is larger than net0 MTU 1500 - 18 = 1482" in text
    assert "EMSGSIZE" in text and "fix: ip link set tap0 mtu 1482" in text


def test_tap_mtu_before_start_is_set_by_the_forwarder():
    found = doctor.check_tap_mtu(idle(svc=tap(mtu=1500, persist=True)))
    assert levels(found) == [INFO, INFO] and "eoe_filter sets 1482 when it starts" in found[0].text


def test_tap_mtu_fits_and_inner_vlan_hint():
    found = doctor.check_tap_mtu(healthy(net=link("net0", mtu=9000), svc=tap(mtu=8982)))
    assert levels(found) == [OK, INFO]
    assert "8982 fits net0 MTU 9000 - 18 = 8982" in found[0].text
    assert "4-byte tag" in found[1].text and "--tap-mtu 8978" in found[1].text


def test_tap_mtu_before_the_tap_exists():
    found = doctor.check_tap_mtu(idle())
    assert levels(found) == [INFO, INFO] and "gets MTU 1482" in found[0].text


def test_vlan_filter_without_the_eoe_vid_eats_frames():
    filtering = Features(active=frozenset({"rx-vlan-filter", "rx-vlan-hw-parse"}),
                         changeable=frozenset({"rx-vlan-filter"}))
    text = the_fail(healthy(features={"net0": filtering}))
    assert "rx-vlan-filter on" in text and "VID 4094 is not among them" in text
    assert "ip link add link net0 name net0.4094 type vlan id 4094" in text
    assert "ethtool -K net0 rx-vlan-filter off" in text


def test_vlan_filter_fixed_on_offers_only_the_vlan_device():
    fixed = Features(active=frozenset({"rx-vlan-filter"}), changeable=frozenset())
    text = the_fail(healthy(features={"net0": fixed}, vid=100))
    assert "rx-vlan-filter on [fixed]" in text and "vlan id 100" in text and "ethtool -K" not in text


def test_vlan_filter_with_a_vlan_device_for_the_vid_is_fine():
    filtering = Features(active=frozenset({"rx-vlan-filter"}), changeable=frozenset())
    found = doctor.check_nic(healthy(features={"net0": filtering}, vlans={"net0": frozenset({4094})}))
    assert levels(found) == [OK, INFO] and "lets VID 4094 through" in found[0].text


def test_vlan_filter_for_the_dhcp_relay_is_information():
    filtering = Features(active=frozenset({"rx-vlan-filter"}), changeable=frozenset())
    facts = healthy(relay="dhcp", service="svc0", svc=link("svc0", index=4),
                    features={"net0": filtering, "svc0": VETH}, vlans={"net0": frozenset({7, 8})})
    found = doctor.check_nic(facts)
    assert levels(found) == [INFO, INFO, OK, INFO]
    assert "only the VIDs of its VLAN devices pass: 7, 8" in found[0].text


def test_vlan_offload_state_is_reported():
    on = doctor.check_nic(healthy())
    assert on[0].text == "net0 passes every VLAN (rx-vlan-filter off [fixed])"
    assert on[1].level == INFO and on[1].text.startswith("net0 rx-vlan-offload on: the NIC lifts")
    off = doctor.check_nic(healthy(features={"net0": Features(frozenset(), frozenset({"rx-vlan-hw-parse"}))}))
    assert off[1].text.startswith("net0 rx-vlan-offload off: the kernel lifts")


def test_unreadable_nic_features():
    found = doctor.check_nic(healthy(features={"net0": "ethtool netlink: Operation not supported"}))
    assert levels(found) == [INFO] and "ethtool -k net0" in found[0].text


def test_no_forwarder_running():
    text = doctor.check_forwarder(idle())[0].text
    assert text.startswith("no eoe_filter is running for tap0") and "fix: start eoe_filter -n net0 -t tap0 -E" in text


def test_forwarder_of_the_other_relay():
    facts = healthy(snapshot=snapshot(relay="dhcp"), later=snapshot(relay="dhcp"))
    assert any("runs relay dhcp, not eoe" in t for t in fails(facts))


def test_control_endpoint_refuses_us():
    found = doctor.check_forwarder(healthy(snapshot=None, later=None, control_error="permission denied"))
    assert levels(found) == [FAIL] and "run doctor as root" in found[0].text


def test_past_drops_are_information():
    past = snapshot({"tap_down": 1204, "filtered": None})
    found = doctor.check_forwarder(healthy(snapshot=past, later=past))
    assert levels(found) == [OK, INFO]
    assert found[1].text == ("net -> service: 1204 frames dropped (tap down) because tap0 was down; "
                             "none during this check")
    assert "0:01:02" in found[0].text


def test_drops_growing_during_the_check_are_a_problem():
    found = doctor.check_forwarder(healthy(snapshot=snapshot({"tap_down": 10}), later=snapshot({"tap_down": 35})))
    assert levels(found) == [OK, FAIL]
    assert found[1].text == ("net -> service: dropping now, 25 frames in the last 0.5 s (tap down) because tap0 "
                             "was down; fix: ip link set tap0 up")


def test_drop_reasons_name_the_interface_of_their_direction():
    snap = snapshot()
    snap["counters"]["service_to_net"]["drops"] = {"net_down": 3, "too_big": 2}
    found = doctor.drop_findings(healthy(snapshot=snap, later=snap))
    assert [f.text.split(";")[0] for f in found] == [
        "service -> net: 3 frames dropped (net down) because net0 was down or had no carrier",
        "service -> net: 2 frames dropped (too big) because they were larger than net0 accepts"]


def test_every_drop_reason_is_explained():
    assert set(doctor._WHY) == set(DropReason)


def test_exit_code_and_usage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(doctor, "gather", lambda *args: healthy())
    assert doctor.main(["-n", "net0", "-t", "tap0", "-E"]) == 0
    monkeypatch.setattr(doctor, "gather", lambda *args: healthy(svc=tap(up=False)))
    assert doctor.main(["-n", "net0", "-t", "tap0", "-E"]) == 1
    assert "FAIL  TAP tap0 is down" in capsys.readouterr().out
    for bad in (["-n", "net0", "-t", "tap0"], ["-n", "net0", "-t", "tap0", "-E", "-V"], ["-t", "tap0", "-E"],
                ["-n", "net0", "-t", "tap0", "-E", "--vid", "4095"]):
        with pytest.raises(SystemExit) as exit_:
            doctor.main(bad)
        assert exit_.value.code == 64


def test_proc_parsers():
    status = "Name:\tpython3\nPPid:\t17\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffcfff\n"
    assert doctor.cap_eff(status) == 0x1FFFEFFCFFF
    assert not doctor.cap_eff(status) >> doctor.CAP_NET_ADMIN & 1
    assert doctor.parent_pid(status) == 17
    assert doctor.attached_interface("pos:\t0\nflags:\t02104002\nmnt_id:\t24\nino:\t105\niff:\ttap0\n") == "tap0"
    assert doctor.attached_interface("pos:\t0\nflags:\t02104002\n") is None


def _rtm_newlink(kind: str, data: list[tuple[str, int]]) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"] = 9
    msg["attrs"] = [("IFLA_IFNAME", "net0.4094"), ("IFLA_LINK", 2),
                    ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind), ("IFLA_INFO_DATA", {"attrs": data})]})]
    msg.encode()
    decoded = ifinfmsg(msg.data)
    decoded.decode()
    return decoded


def test_vlan_devices_from_netlink_messages():
    assert doctor.vlan_of(_rtm_newlink("vlan", [("IFLA_VLAN_ID", 4094)])) == (2, 4094)
    assert doctor.vlan_of(_rtm_newlink("vxlan", [("IFLA_VXLAN_ID", 5)])) is None
