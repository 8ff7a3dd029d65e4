"""`--workers` / `workers`: only the fast datapath of relay eoe takes more than one (no privileges)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eoe_filter.cli import build_parser, main, options_from


def parse(*argv: str):
    return options_from(build_parser().parse_args(["-n", "eth0", "-t", "tap0", *argv]))


def test_default_is_one_worker_pair():
    assert parse("-E").workers == 1


def test_fast_eoe_takes_n_from_the_command_line_and_the_file(tmp_path: Path):
    assert parse("-E", "--datapath", "fast", "--workers", "4").workers == 4
    config = tmp_path / "fwd.toml"
    config.write_text('relay = "eoe"\ndatapath = "fast"\nworkers = 2\n')
    assert parse("--config", str(config)).workers == 2


@pytest.mark.parametrize("argv", [
    ["-E", "--datapath", "simple"], ["-E", "--datapath", "ebpf"], ["-E", "--datapath", "auto"],
    ["-V", "--datapath", "fast"],
])
def test_n_above_one_elsewhere_is_a_config_error(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(["-n", "eth0", "-t", "tap0", "--workers", "2", *argv]) == 78
    assert "--workers: 2 worker pairs need the fast datapath and relay eoe" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_n_is_a_config_error(value: str, capsys: pytest.CaptureFixture[str]):
    assert main(["-n", "eth0", "-t", "tap0", "-E", "--datapath", "fast", "--workers", value]) == 78
    assert "--workers:" in capsys.readouterr().err


def test_one_worker_pair_is_fine_anywhere():
    assert parse("-V", "--datapath", "simple", "--workers", "1").workers == 1
