"""--accept-dmac / --accept-vid as a pure rule, and their settings (no privileges)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eoe_filter.config import ConfigError, build_options
from eoe_filter.relays.eoe import EoeRelay
from eoe_filter.wire.accept import AcceptRule
from eoe_filter.wire.drops import DropReason

BOARD = bytes.fromhex("060000000078")


def frame(dst: bytes = BOARD, tpid: int = 0x8100, vid: int = 4094, size: int = 60) -> bytes:
    return dst + bytes(6) + struct.pack("!HH", tpid, 0xE000 | vid) + bytes(size - 16)


def test_empty_rule_accepts_everything_and_is_falsy():
    assert not AcceptRule()
    assert AcceptRule().accepts(frame(dst=b"\xff" * 6))


def test_dmac_and_vid():
    rule = AcceptRule(frozenset({BOARD}), frozenset({4094, 7}))
    assert rule.accepts(frame())
    assert rule.accepts(frame(vid=7))
    assert not rule.accepts(frame(vid=8))
    assert not rule.accepts(frame(dst=b"\x02" * 6))
    assert not rule.accepts(frame(tpid=0x88A8))
    assert not rule.accepts(frame()[:15])


@given(st.binary(max_size=64), st.sets(st.integers(0, 4095), max_size=3))
def test_vid_rule_never_raises_and_matches_its_definition(data, vids):
    rule = AcceptRule(vids=frozenset(vids))
    tagged = len(data) >= 16 and data[12:14] == b"\x81\x00"
    expected = len(data) >= 16 and (not vids or (tagged and (data[14] << 8 | data[15]) & 0xFFF in vids))
    assert rule.accepts(data) is expected


def test_relay_counts_refused_frames_as_filtered():
    options = build_options({"network": "a", "service": "b", "relay": "eoe", "accept_vid": "4094"}, {})
    relay = EoeRelay(options)
    buf = bytearray(frame(vid=5) + bytes(100))
    assert relay.net_to_service(buf, 0, 60) is DropReason.FILTERED
    buf = bytearray(frame() + bytes(100))
    assert relay.net_to_service(buf, 0, 60) == (22, 60)


def test_settings_from_the_command_line_and_from_toml_lists():
    cli = build_options({"network": "a", "service": "b", "relay": "eoe",
                         "accept_dmac": "06:00:00:00:00:78, 06:00:00:00:00:79", "accept_vid": "1,0x10"}, {})
    toml = build_options({"network": "a", "service": "b", "relay": "eoe",
                          "accept_dmac": ["06:00:00:00:00:78", "06:00:00:00:00:79"], "accept_vid": [1, 16]}, {})
    assert cli.accept_dmac == toml.accept_dmac == frozenset({BOARD, bytes.fromhex("060000000079")})
    assert cli.accept_vid == toml.accept_vid == frozenset({1, 16})


@pytest.mark.parametrize(("key", "value"), [("accept_vid", "5000"), ("accept_dmac", "x"), ("accept_vid", []),
                                            ("user", "no-such-user-here"), ("wait_link", "-1")])
def test_bad_values(key, value):
    with pytest.raises(ConfigError, match=key):
        build_options({"network": "a", "service": "b", "relay": "eoe", key: value}, {})
