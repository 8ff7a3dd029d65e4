"""The command line: the original's flags, exit codes, long options (no privileges)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eoe_filter.cli import build_parser, main, options_from
from eoe_filter.config import ConfigError
from eoe_filter.wire.eoe import EoeHeader


def parse(*argv: str):
    return options_from(build_parser().parse_args(list(argv)))


def test_original_flags_combine_getopt_style():
    o = parse("-n", "eth0", "-t", "tap0", "-EF", "-dd", "-s")
    assert (o.network, o.service, o.relay, o.filter, o.debug, o.syslog) == ("eth0", "tap0", "eoe", True, 2, True)
    o = parse("-neth0", "-ttap0", "-V")
    assert (o.network, o.service, o.relay, o.filter, o.debug) == ("eth0", "tap0", "dhcp", False, 0)


def test_defaults_are_the_originals():
    o = parse("-n", "eth0", "-t", "tap0", "-E")
    assert o.header == EoeHeader()
    assert o.header.pack(0).hex() == "0600000000f8060000000078" "8100" "0ffe" "0000" "80" "0000" "00"
    assert (o.persist, o.tap_mtu) == (False, None)


def test_header_options():
    o = parse("-n", "e", "-t", "t", "-E", "--dmac", "06:00:00:00:00:78", "--smac", "06:00:00:00:00:f8",
              "--vid", "0x64", "--pcp", "7", "--dei", "1", "--op-code", "1", "--downstream", "1",
              "--flag", "7", "--itf", "0xffff", "--protocol-id", "255", "--tap-mtu", "1486", "--persist")
    assert o.header == EoeHeader(dst=bytes.fromhex("060000000078"), src=bytes.fromhex("0600000000f8"), vid=100,
                                 pcp=7, dei=1, op_code=1, downstream=1, flag=7, itf=0xFFFF, protocol_id=255)
    assert (o.tap_mtu, o.persist) == (1486, True)


@pytest.mark.parametrize("argv", [
    [], ["-n", "eth0"], ["-n", "eth0", "-t", "tap0"], ["-n", "eth0", "-t", "tap0", "-E", "-V"],
    ["-n", "eth0", "-t", "tap0", "-E", "-x"], ["-n", "eth0", "-t", "tap0", "-E", "extra"],
])
def test_usage_errors_exit_64(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 64
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "key"), [
    (["--vid", "4096"], "--vid"), (["--pcp", "8"], "--pcp"), (["--dmac", "nope"], "--dmac"),
    (["--op-code", "x"], "--op-code"), (["--tap-mtu", "20"], "tap-mtu"), (["--itf", "-1"], "--itf"),
    (["--datapath", "warp"], "datapath"),
])
def test_bad_values_exit_78_naming_the_option(argv, key, capsys):
    assert main(["-n", "efnone0", "-t", "efnone1", "-E", *argv]) == 78  # never a real interface
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]


def test_same_interface_twice_is_a_config_error():
    with pytest.raises(ConfigError):
        parse("-n", "eth0", "-t", "eth0", "-E")


def test_help_and_version_run_as_a_module():
    out = subprocess.run([sys.executable, "-m", "eoe_filter", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("-n", "-t", "-s", "-d", "-E", "-V", "-F", "--persist", "--tap-mtu", "--dmac", "--op-code",
                 "Exit codes"):
        assert flag in out.stdout
    out = subprocess.run([sys.executable, "-m", "eoe_filter", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("eoe_filter ")
