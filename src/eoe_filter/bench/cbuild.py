"""Compile the C baseline (c_original.c) with the system C compiler.

The benchmark compares the Python datapaths with the original's design in
C; the binary is built on the machine that runs the benchmark because it
must match that machine's kernel headers and architecture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("c_original.c")
CFLAGS = ("-O2", "-pthread", "-Wall", "-Wextra")


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A built binary, or why there is none; callers decide whether a missing
    compiler skips the baseline or fails. `warnings` is the compiler's stderr
    of a successful build, kept so tests can demand a warning-clean source."""

    binary: Path | None
    reason: str = ""
    warnings: str = ""

    @property
    def ok(self) -> bool:
        return self.binary is not None


def find_c_compiler() -> str | None:
    """The compiler named by $CC, else the first of cc, gcc, clang on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def build_c_original(outdir: Path) -> BuildResult:
    """Compile c_original.c into outdir/c_original."""
    cc = find_c_compiler()
    if cc is None:
        return BuildResult(None, "no C compiler found ($CC, cc, gcc, clang)")
    outdir.mkdir(parents=True, exist_ok=True)
    binary = outdir / "c_original"
    cmd = [cc, *CFLAGS, "-o", str(binary), str(SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return BuildResult(None, f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    return BuildResult(binary, warnings=proc.stderr.strip())
