"""--config FILE: the same settings as the command line, which overrides the file (no privileges)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eoe_filter.cli import build_parser, main, options_from
from eoe_filter.config import SETTINGS, ConfigError, build_options, load_file
from eoe_filter.wire.eoe import EoeHeader

EXAMPLE = Path(__file__).parents[2] / "contrib" / "systemd" / "example.toml"


def options(tmp_path: Path, text: str, *argv: str):
    path = tmp_path / "fwd.toml"
    path.write_text(text)
    return options_from(build_parser().parse_args(["--config", str(path), *argv]))


def test_the_shipped_example_is_valid_and_means_the_defaults(tmp_path):
    values, header = load_file(EXAMPLE)
    o = build_options(values, header)
    assert (o.network, o.service, o.relay, o.filter) == ("eth0", "tap-fwd", "eoe", True)
    assert o.header == EoeHeader()


def test_fast_is_the_default_datapath_and_simple_the_reference_stays_selectable(tmp_path):
    minimal = 'network = "eth1"\nservice = "tap9"\nrelay = "eoe"\n'
    assert options(tmp_path, minimal).datapath == "fast"
    assert options(tmp_path, minimal, "--datapath", "simple").datapath == "simple"
    assert options(tmp_path, minimal + 'datapath = "simple"\n').datapath == "simple"


def test_file_alone_is_enough(tmp_path):
    o = options(tmp_path, 'network = "eth1"\nservice = "tap9"\nrelay = "dhcp"\nfilter = true\ndebug = 2\n'
                          'tap_mtu = 1486\n[eoe]\nvid = 100\nsmac = "02:00:00:00:00:01"\nitf = 0x3001\n')
    assert (o.network, o.service, o.relay, o.filter, o.debug, o.tap_mtu) == ("eth1", "tap9", "dhcp", True, 2, 1486)
    assert o.header == EoeHeader(vid=100, src=bytes.fromhex("020000000001"), itf=0x3001)


def test_command_line_overrides_the_file(tmp_path):
    o = options(tmp_path, 'network = "eth1"\nservice = "tap9"\nrelay = "dhcp"\ntap_mtu = 1400\n[eoe]\nvid = 100\n',
                "-n", "eth2", "-E", "--tap-mtu", "1300", "--vid", "200", "--pcp", "3")
    assert (o.network, o.service, o.relay, o.tap_mtu) == ("eth2", "tap9", "eoe", 1300)
    assert (o.header.vid, o.header.pcp) == (200, 3)


@pytest.mark.parametrize(("text", "named"), [
    ('network = "eth0"\nbogus = 1\n', "unknown key 'bogus'"),
    ('[eoe]\nvlan = 3\n', "unknown key 'eoe.vlan'"),
    ('tap_mtu = "big"\n', "tap_mtu: 'big' is not a number"),
    ('filter = "yes"\n', "filter: 'yes' is not true or false"),
    ('[eoe]\nvid = 5000\n', "eoe.vid: 5000 is outside 0..4095"),
    ('[eoe]\ndmac = "nope"\n', "eoe.dmac: not a MAC address"),
    ('relay = "ppp"\n', "relay: 'ppp' is not one of eoe, dhcp"),
    ('network = \n', "fwd.toml: "),
])
def test_bad_files_are_one_line_config_errors_naming_the_key(tmp_path, capsys, text, named):
    path = tmp_path / "fwd.toml"
    path.write_text(text)
    # the interface never exists, so even a wrongly accepted value could not touch a real one
    argv = ["--config", str(path), "-t", "efnone1"]
    argv += [] if "network" in text else ["-n", "efnone0"]
    argv += [] if "relay" in text else ["-E"]
    assert main(argv) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and str(path) in err[0]


def test_missing_file_is_a_config_error(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.toml")]) == 78
    assert "No such file" in capsys.readouterr().err


def test_required_settings_missing_everywhere_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "fwd.toml"
    path.write_text('service = "tap0"\n')
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(path), "-E"])
    assert exc.value.code == 64
    assert "missing -n" in capsys.readouterr().err


def test_every_setting_has_a_command_line_option():
    dests = {a.dest for a in build_parser()._actions}
    assert set(SETTINGS) <= dests


def test_values_are_checked_whatever_their_origin():
    with pytest.raises(ConfigError):
        build_options({"network": "eth0", "service": "eth0", "relay": "eoe"}, {})
