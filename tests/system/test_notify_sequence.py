"""Type=notify: READY=1 only once the TAP is up and both directions run; WATCHDOG; STOPPING."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from .conftest import EoeLab

DATAPATH = ("--datapath", os.environ["EOE_TEST_DATAPATH"]) if os.environ.get("EOE_TEST_DATAPATH") else ()
"""Like start_forwarder(): the suite may run over another datapath."""


def test_ready_after_the_tap_is_up_then_watchdog_status_and_stopping(eoe_lab: EoeLab, tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = eoe_lab.lab.start(eoe_lab.ns, ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable,
                                              "-m", "eoe_filter", "-n", "net0", "-t", "tap0", "-E", *DATAPATH],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = sock.recv(4096)
        tap = json.loads(eoe_lab.ip("-j", "link", "show", "tap0"))[0]  # asked the moment READY arrived
        assert first == b"READY=1"
        assert "UP" in tap["flags"] and tap["mtu"] == 1482
        seen = [sock.recv(4096) for _ in range(4)]
        assert b"WATCHDOG=1" in seen
        status = [m for m in seen if m.startswith(b"STATUS=")]
        assert status and b"net0 <-> tap0 (eoe, " in status[0]
        proc.terminate()
        rest = []
        deadline = time.monotonic() + 5
        while b"STOPPING=1" not in rest and time.monotonic() < deadline:
            rest.append(sock.recv(4096))
        assert b"STOPPING=1" in rest
        assert proc.wait(5) == 0
