"""The Lua dissector decodes crafted EOE frames in the real tshark, and leaves other frames alone.

tshark is required, not optional: a missing tshark fails the test (CI
installs Debian's ``tshark`` package). As root, tshark runs as ``nobody``
(uid/gid 65534), so the result does not depend on whether this Wireshark
lets root run user Lua scripts (init.lua's run_user_scripts_when_superuser).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, LLC, SNAP, STP, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

import eoe_filter.contrib
from eoe_filter.contrib.scapy_eoe import EOE, itf_from_pon_gem

LUA = Path(eoe_filter.contrib.__file__).with_name("eoe.lua")
NOBODY = 65534

EOE_FIELDS = [
    "eoe.dst", "eoe.src", "eoe.tpid", "eoe.pcp", "eoe.dei", "eoe.vid", "eoe.length",
    "eoe.op_code", "eoe.downstream", "eoe.flag", "eoe.itf", "eoe.pon", "eoe.gem_port",
    "eoe.protocol_id", "eoe.length.expected",
]  # fmt: skip
OTHER_FIELDS = ["frame.protocols", "eth.type", "vlan.id", "ip.dst", "udp.dstport", "arp.dst.proto_ipv4"]

ARP_REQUEST = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP(
    hwsrc="02:00:00:00:00:01", psrc="192.0.2.1", pdst="192.0.2.2"
)
INNER_UDP = (
    Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    / IP(src="192.0.2.1", dst="192.0.2.77")
    / UDP(sport=1234, dport=4000)
    / Raw(b"x" * 100)
)


def _padded_min_frame() -> bytes:
    """A 46-byte EOE frame (inner of 24 bytes) padded to 60 bytes by the sending NIC."""
    inner = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x88B5) / Raw(b"abcdefghij"))
    return bytes(EOE(len=4 + len(inner)))[:22] + inner + bytes(60 - 22 - len(inner))


def _pvst_bpdu() -> bytes:
    llc = bytes(LLC() / SNAP(OUI=0x0C, code=0x010B) / STP())
    return bytes(Ether(dst="01:00:0c:cc:cc:cd", src="02:00:00:00:00:01") / Dot1Q(vlan=7, type=len(llc))) + llc


FRAMES: list[Packet | bytes] = [  # tshark frame numbers are index + 1
    EOE() / ARP_REQUEST,
    EOE(
        dst="02:11:22:33:44:55",
        src="02:66:77:88:99:aa",
        prio=5,
        dei=1,
        vlan=123,
        op_code=1,
        downstream=1,
        flag=5,
        itf=itf_from_pon_gem(3, 0x456),
        protocol_id=0x9C,
    )
    / INNER_UDP,
    Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q(vlan=7) / IP(dst="198.51.100.1") / UDP(),
    _pvst_bpdu(),
    _padded_min_frame(),
    EOE()
    / Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    / Dot1Q(vlan=9, type=0x08AB)
    / Raw(b"ctl"),
    EOE(len=200) / INNER_UDP,  # length field does not match the frame
]


@pytest.fixture(scope="module")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.fail(
            "tshark not found on PATH: install it (Debian: apt-get install tshark); "
            "the EOE dissector test needs the real tshark and does not skip",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A world-readable directory holding the script and the pcap, so `nobody` can read them."""
    with tempfile.TemporaryDirectory(prefix="eoe-tshark-") as name:
        path = Path(name)
        path.chmod(0o755)
        shutil.copy(LUA, path / "eoe.lua")
        wrpcap(str(path / "frames.pcap"), [Ether(bytes(frame)) for frame in FRAMES])
        for file in path.iterdir():
            file.chmod(0o644)
        yield path


def run_tshark(tshark: str, workdir: Path, *args: str) -> str:
    """Run tshark with the EOE script loaded, as `nobody` when we are root.

    HOME is the work directory, so a copy of eoe.lua installed in the personal
    plugin folder does not make the -X copy fail to register its protocol.
    """
    root = os.geteuid() == 0
    result = subprocess.run(
        [tshark, "-X", f"lua_script:{workdir / 'eoe.lua'}", "-r", str(workdir / "frames.pcap"), *args],
        cwd=workdir,
        env={**os.environ, "HOME": str(workdir)},
        capture_output=True,
        text=True,
        timeout=120,
        user=NOBODY if root else None,
        group=NOBODY if root else None,
        extra_groups=[] if root else None,
    )
    assert result.returncode == 0, f"tshark failed ({result.returncode}):\n{result.stderr}"
    assert "eoe.lua" not in result.stderr and "Lua" not in result.stderr, f"Lua error:\n{result.stderr}"
    return result.stdout


def decode(tshark: str, workdir: Path, *args: str) -> list[dict[str, str]]:
    """One dict per frame of the requested fields; absent fields map to ''."""
    fields = EOE_FIELDS + OTHER_FIELDS + ["_ws.expert.message"]
    out = run_tshark(
        tshark, workdir, "-T", "fields", "-E", "separator=|", *args, *(a for f in fields for a in ("-e", f))
    )
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    assert len(rows) == len(FRAMES), out
    assert not any("Lua Error" in row["_ws.expert.message"] for row in rows), out
    return rows


BOOLEANS = {"False": 0, "True": 1}


def as_int(value: str) -> int:
    """Read an integer as tshark prints it: in the field's base (decimal or 0x hex); booleans are
    0/1 up to Wireshark 4.0 and False/True in later versions."""
    return BOOLEANS[value] if value in BOOLEANS else int(value, 0)


@pytest.fixture(scope="module")
def frames(tshark: str, workdir: Path) -> list[dict[str, str]]:
    return decode(tshark, workdir)


def header(row: dict[str, str]) -> dict[str, object]:
    numeric = (
        "tpid",
        "pcp",
        "dei",
        "vid",
        "length",
        "op_code",
        "downstream",
        "flag",
        "itf",
        "pon",
        "gem_port",
        "protocol_id",
    )
    return {"dst": row["eoe.dst"], "src": row["eoe.src"], **{f: as_int(row[f"eoe.{f}"]) for f in numeric}}


def test_default_header_of_an_arp_request(frames: list[dict[str, str]]) -> None:
    row = frames[0]
    assert header(row) == {
        "dst": "06:00:00:00:00:f8", "src": "06:00:00:00:00:78", "tpid": 0x8100, "pcp": 0, "dei": 0,
        "vid": 4094, "length": 68, "op_code": 8, "downstream": 0, "flag": 0, "itf": 0, "pon": 0,
        "gem_port": 0, "protocol_id": 0,
    }  # fmt: skip
    assert "eoe:eth:ethertype:arp" in row["frame.protocols"]
    assert as_int(row["eth.type"]) == 0x0806
    assert row["arp.dst.proto_ipv4"] == "192.0.2.2"
    assert row["_ws.expert.message"] == ""


def test_non_default_header_and_inner_ip(frames: list[dict[str, str]]) -> None:
    row = frames[1]
    assert header(row) == {
        "dst": "02:11:22:33:44:55", "src": "02:66:77:88:99:aa", "tpid": 0x8100, "pcp": 5, "dei": 1,
        "vid": 123, "length": 4 + len(bytes(INNER_UDP)), "op_code": 1, "downstream": 1, "flag": 5,
        "itf": 0x3456, "pon": 3, "gem_port": 0x456, "protocol_id": 0x9C,
    }  # fmt: skip
    assert row["ip.dst"] == "192.0.2.77"
    assert as_int(row["udp.dstport"]) == 4000


def test_ordinary_vlan_frame_is_not_eoe(frames: list[dict[str, str]]) -> None:
    row = frames[2]
    assert "eoe" not in row["frame.protocols"].split(":")
    assert row["eoe.vid"] == "" and row["vlan.id"] == "7" and row["ip.dst"] == "198.51.100.1"


def test_pvst_bpdu_in_a_vlan_stays_llc(frames: list[dict[str, str]]) -> None:
    row = frames[3]
    assert "eoe" not in row["frame.protocols"].split(":")
    assert "llc" in row["frame.protocols"].split(":")


def test_minimum_size_frame_with_ethernet_padding(frames: list[dict[str, str]]) -> None:
    row = frames[4]
    assert as_int(row["eoe.length"]) == 28 and as_int(row["eoe.length.expected"]) == 42
    assert as_int(row["eth.type"]) == 0x88B5
    assert "padding" in row["_ws.expert.message"]


def test_inner_0x08ab_is_named_internal_control(frames: list[dict[str, str]]) -> None:
    row = frames[5]
    assert row["frame.protocols"].endswith("eoe:eth:ethertype:vlan:ethertype:eoe_ctl")
    assert row["vlan.id"] == "9"


def test_length_mismatch_is_left_to_vlan_unless_decoded_as_eoe(
    frames: list[dict[str, str]], tshark: str, workdir: Path
) -> None:
    assert "eoe" not in frames[6]["frame.protocols"].split(":")

    forced = decode(tshark, workdir, "-d", "ethertype==0x8100,eoe")[6]
    assert as_int(forced["eoe.length"]) == 200
    assert as_int(forced["eoe.length.expected"]) == 4 + len(bytes(INNER_UDP))
    assert "Length field 200 does not match" in forced["_ws.expert.message"]
    assert forced["ip.dst"] == "192.0.2.77"


def test_length_mismatch_is_filterable(tshark: str, workdir: Path) -> None:
    """Decode As forces every 0x8100 tag to EOE, so the plain VLAN frame and the inner tag of frame 6
    are flagged along with the bad length; the real EOE frames (and the BPDU, whose 802.3 length is
    right) are not."""
    args = ("-d", "ethertype==0x8100,eoe", "-Y", "eoe.length.mismatch", "-T", "fields", "-e", "frame.number")
    assert run_tshark(tshark, workdir, *args).split() == ["3", "6", "7"]
