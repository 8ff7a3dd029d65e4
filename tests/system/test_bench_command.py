"""`eoe_filter bench --quick`: the whole benchmark end to end, once, as CI runs it, and nothing left behind.

The figures themselves depend on the machine; what is checked is that every
row was measured with a sane figure in every column, that the forwarders'
own counts matched what the sinks got, that TCP went through two forwarders
of every row and over the plain veth pair, and that the namespaces and every
process the benchmark started are gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from eoe_filter.datapath import datapaths

pytestmark = pytest.mark.system

DIRECTIONS = ("net_to_service", "service_to_net", "both")
SIZES = (64, 1400)
USERSPACE = ("simple", "c")
"""Rows whose forwarding is certainly done by the forwarder process, so its CPU time per frame is > 0."""


def session_members(sid: int) -> list[int]:
    """Live processes in session `sid` (everything the benchmark started inherits it).

    Zombies are not counted: an exited child whose parent is gone waits for
    init to reap it, and init here may take a moment.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def bench() -> tuple[dict, str, int, int]:
    """(the JSON document, progress output, session id, exit code) of one quick run."""
    proc = subprocess.Popen([sys.executable, "-m", "eoe_filter", "bench", "--quick", "--json", "--repeat", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"eoe_filter bench --quick did not finish in 300 s:\n{err}")
    assert out, err
    return json.loads(out), err, proc.pid, proc.returncode


def test_every_row_is_measured(bench: tuple[dict, str, int, int]) -> None:
    doc, progress, _, returncode = bench
    expected = [name for name in datapaths() if name != "auto"] + ["c", "kernel"]
    rows = {(r["datapath"], r["direction"], r["inner_size"]): r for r in doc["rows"]}
    assert set(rows) == {(n, d, s) for n in expected for d in DIRECTIONS for s in SIZES}
    for (name, direction, size), r in rows.items():
        where = f"{name} {direction} {size}"
        assert r["skipped"] is None, where
        assert r["delivered_fps"]["median"] > 0, where
        assert r["delivered_bps"]["median"] == pytest.approx(r["delivered_fps"]["median"] * size * 8), where
        assert r["offered_fps"]["median"] > 0, where
        assert (r["ratio_to_c"] or 0) > 0 and (r["ratio_to_kernel"] or 0) > 0, (where, r["flags"])
        assert all(run["counts_match"] for run in r["runs"]), \
            (where, [(run["forwarder_frames"], run["sink_frames"], run["sink_drops"]) for run in r["runs"]])
        assert not [f for f in r["flags"] if f.startswith(("count mismatch", "more frames"))], \
            (where, r["flags"])
        if direction == "both":
            assert r["latency_us"] is None, where
        else:
            p50, p99 = r["latency_us"]["p50"]["median"], r["latency_us"]["p99"]["median"]
            assert 0 < p50 <= p99, where
            if name != "kernel":
                assert r["added_latency_us"]["p50"] is not None and r["added_latency_us"]["p99"] is not None, where
        if name == "kernel":
            assert r["cpu_ns_per_frame"] is None and r["rss_start_bytes"] is None, where
            continue
        assert r["rss_start_bytes"]["median"] > 0 and r["rss_end_bytes"]["median"] > 0, where
        assert r["cpu_ns_per_frame"]["median"] >= 0 and 0 <= r["cpu_share"]["median"], where
        if name in USERSPACE:
            assert r["cpu_ns_per_frame"]["median"] > 0, where
    assert rows[("c", "both", 64)]["ratio_to_c"] == 1.0
    assert len([line for line in progress.splitlines() if " run 1/1: " in line]) == len(rows)
    assert returncode == 0, progress


def test_tcp_through_two_forwarders(bench: tuple[dict, str, int, int]) -> None:
    """--quick: one 1-second iperf3 run per path, the plain veth pair first, every row but kernel."""
    doc, progress, _, _ = bench
    tcp = doc["tcp"]
    assert tcp is not None and tcp["skipped"] is None and tcp["seconds"] == 1
    assert tcp["failures"] == []
    rows = {r["datapath"]: r for r in tcp["rows"]}
    assert list(rows) == ["veth", *(name for name in datapaths() if name != "auto"), "c"]
    for name, r in rows.items():
        assert r["skipped"] is None, name
        assert len(r["runs_mbps"]) == 1, name
        assert r["mbps"]["median"] > 0 and r["ratio_to_veth"] > 0, name
    assert rows["veth"]["ratio_to_veth"] == 1.0
    assert len([line for line in progress.splitlines() if line.startswith("[tcp 1/1] ")]) == len(rows)


def test_nothing_is_left_behind(bench: tuple[dict, str, int, int]) -> None:
    doc, _, sid, _ = bench
    left = [name for name in os.listdir("/run/netns") if name.startswith(doc["lab"])] \
        if os.path.isdir("/run/netns") else []
    assert left == []
    deadline = time.monotonic() + 5
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_members(sid) == []


def test_the_opt_in_qdisc_bypass_row() -> None:
    out = subprocess.run([sys.executable, "-m", "eoe_filter", "bench", "--quick", "--json", "--repeat", "1",
                          "--datapaths", "fast-bypass", "--sizes", "64", "--tcp-seconds", "0"],
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    assert {(r["datapath"], r["direction"]) for r in rows} == {("fast-bypass", d) for d in DIRECTIONS}
    assert all(r["delivered_fps"]["median"] > 0 for r in rows), out.stderr
