"""contrib/systemd/eoe_filter@.service: systemd accepts it, and it keeps what the forwarder relies on.

`systemd-analyze verify` works offline. It needs no running systemd (PID 1 may
be anything) and no D-Bus. It only needs the Debian `systemd` package, for
the binary and for the stock units we reference (network-pre.target,
multi-user.target). CI must install that package; a missing binary is a test
failure, not a skip, so the check cannot disappear unnoticed.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "eoe_filter@.service"

# What systemd prints for keys, sections or values it cannot use. It prints
# these as warnings and still exits 0, so the exit code alone proves nothing.
# Older versions say "Unknown lvalue", newer ones "Unknown key". Any other line
# that names our file is also a failure (see the test).
BAD_OUTPUT = re.compile(r"Unknown (key|lvalue|section)|Failed to parse|not executable", re.IGNORECASE)


def _directives() -> dict[str, list[str]]:
    """Return key -> values, in order, across all sections; repeated keys keep every value."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _one(key: str) -> str:
    values = _directives().get(key)
    assert values, f"{key}= missing from {UNIT.name}"
    return values[-1]


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(
            "systemd-analyze not found: install Debian's 'systemd' package "
            "(apt-get install -y systemd); it works without systemd as PID 1"
        )
    # verify checks that ExecStart's binary exists and is executable, so point
    # it at one that surely does. Everything else is tested byte for byte.
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/local/bin/eoe_filter ") == 1
    text = text.replace("ExecStart=/usr/local/bin/eoe_filter ", "ExecStart=/bin/true ")
    instance = tmp_path / "eoe_filter@test.service"
    instance.write_text(text)

    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env["SYSTEMD_COLORS"] = "0"
    proc = subprocess.run(
        [exe, "verify", str(instance)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    print(f"systemd-analyze verify rc={proc.returncode} output={output!r}")
    assert proc.returncode == 0, output
    bad = [
        line
        for line in output.splitlines()
        if BAD_OUTPUT.search(line) or "eoe_filter@test" in line or str(tmp_path) in line
    ]
    assert not bad, "systemd-analyze verify complained:\n" + "\n".join(bad)


def test_unit_parses_as_ini():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())


def test_type_notify_and_watchdog():
    assert _one("Type") == "notify"
    # notify.py sends from the main process only and stays silent in forked workers.
    assert _one("NotifyAccess") == "main"
    assert _one("WatchdogSec") not in ("", "0", "infinity")


def test_exec_start():
    assert _one("ExecStart") == "/usr/local/bin/eoe_filter --config /etc/eoe_filter/%i.toml"


def test_restart_policy():
    assert _one("Restart") == "on-failure"
    assert _one("RestartSec")
    prevent = _one("RestartPreventExitStatus").split()
    assert "64" in prevent and "78" in prevent  # usage and config errors: a restart cannot help
    assert "69" not in prevent  # interface missing: it may appear later


def test_stop_behaviour():
    assert _one("KillSignal") == "SIGTERM"
    assert _one("KillMode") in ("mixed", "control-group")
    assert _one("TimeoutStopSec") in ("10", "10s")


def test_tun_device_reachable():
    assert _one("DevicePolicy") == "closed"
    allowed = [v.split() for v in _directives()["DeviceAllow"]]
    assert any(v[0] == "/dev/net/tun" and "rw" in v[1:] for v in allowed)
    # PrivateDevices=yes builds a /dev without /dev/net/tun; the TAP could not be created.
    for value in _directives().get("PrivateDevices", []):
        assert value.lower() not in ("yes", "true", "on", "1"), "PrivateDevices would hide /dev/net/tun"


def test_address_families():
    families = set(_one("RestrictAddressFamilies").split())
    assert {"AF_PACKET", "AF_NETLINK", "AF_UNIX", "AF_INET"} <= families
    assert not any(f.startswith("~") for f in families)


def test_capabilities():
    caps = set(_one("CapabilityBoundingSet").split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_SETUID", "CAP_SETGID"} <= caps
    assert "CAP_SYS_ADMIN" not in caps


def test_hardening_present():
    d = _directives()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
    }.items():
        assert d.get(key, [None])[-1] == value, f"{key}={value} expected"
    # Under ProtectSystem=strict this is the only writable state. The %i gives
    # each instance its own directory, which systemd removes at that instance's stop.
    assert _one("RuntimeDirectory").split()[0].startswith("eoe_filter")
    # modprobe in ExecStartPre would be blocked by ProtectKernelModules.
    assert not any("modprobe" in v for v in d.get("ExecStartPre", []))
