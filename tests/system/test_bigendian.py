"""The unprivileged unit tests again, on a big-endian machine (s390x under qemu-user).

Any assumption of host byte order (a struct format without !/>, a ctypes
structure used as a wire format) fails there loudly. The first run builds a
Debian root (about 5 minutes); later runs reuse it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_unit_tests_pass_big_endian():
    env = {**os.environ, "EOE_BE_PIP": "scapy==2.8.0 pyroute2==0.9.7"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "bigendian-unit-tests.sh")], env=env,
                         capture_output=True, text=True, timeout=1800)
    both = out.stdout + out.stderr
    assert "print(sys.byteorder)' in the s390x root: big" in both, both[-4000:]
    assert out.returncode == 0, both[-4000:]
