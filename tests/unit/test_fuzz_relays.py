"""The relays' coverage-guided fuzz target (tests/fuzz/fuzz_relays.py), run for a bounded time.

It runs in a subprocess, as libFuzzer wants the process to itself, from a seed corpus of valid
frames of each kind. EOE_FUZZ_SECONDS (default 60, 0 skips) is the budget for all relays together;
the fuzzer's choice of relay is part of its input. Any crash fails the test with the input that did it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_relays.py"
SECONDS = int(os.environ.get("EOE_FUZZ_SECONDS", "60"))
ARTIFACTS = ("crash-*", "timeout-*", "oom-*", "slow-unit-*")


@pytest.mark.timeout(SECONDS + 180)
def test_fuzzing_the_relays_per_frame_path_finds_no_crash(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:  # e.g. the big-endian run: no atheris for s390x
        pytest.skip("atheris is not installed (the test extra has it where PyPI has a wheel: x86_64)")
    if SECONDS <= 0:  # libFuzzer would read -max_total_time=0 as "forever"
        pytest.skip("EOE_FUZZ_SECONDS=0")
    seeds, corpus = tmp_path / "seeds", tmp_path / "corpus"
    corpus.mkdir()
    subprocess.run([sys.executable, str(HARNESS), "--write-seeds", str(seeds)], check=True, capture_output=True)
    run = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), str(seeds), f"-max_total_time={SECONDS}", "-max_len=4096",
         "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=SECONDS + 120, check=False)
    out = run.stderr + run.stdout
    artifacts = sorted(p for pattern in ARTIFACTS for p in tmp_path.glob(pattern))
    if run.returncode != 0 or artifacts or "==ERROR" in out or "Uncaught Python exception" in out:
        pytest.fail(_report(run.returncode, out, artifacts), pytrace=False)
    print(_summary(out))


def _report(returncode: int, out: str, artifacts: list[Path]) -> str:
    lines = [f"the fuzzer failed (exit {returncode}):", *out.splitlines()[-60:]]
    for path in artifacts:
        data = path.read_bytes()
        lines += [f"{path.name} ({len(data)} bytes): {data.hex()}", f"replay: python {HARNESS} {path}"]
    return "\n".join(lines)


def _summary(out: str) -> str:
    """The last status line's numbers: runs, coverage, features, speed."""
    done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", out)
    if not done:
        return "fuzz: no final status line"
    runs, cov, ft, speed = done[-1]
    return f"fuzz: {runs} runs, {speed} exec/s, cov {cov}, features {ft}"
