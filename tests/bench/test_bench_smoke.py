"""The benchmark suite's quick mode runs end to end and writes well-formed results.

It runs the documented command (``bash bench/run --quick``) into a temporary folder and checks
the shape of what it wrote: the doc section with both tables, the PNG chart and the JSON. It
never looks at how fast anything was; timings belong to the benchmark, not to a test.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def smtp_sink() -> Path:
    """smtp-sink fetched into .tools/ (apt-get download postfix); CI fails without it."""
    sys.path.insert(0, str(REPO))
    try:
        from bench.tools import ToolUnavailableError, ensure_smtp_sink

        try:
            return ensure_smtp_sink()
        except ToolUnavailableError as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"the benchmark's zero-latency sink is unavailable: {exc}")
            pytest.skip(f"smtp-sink unavailable here: {exc}")
    finally:
        sys.path.remove(str(REPO))


@pytest.fixture(scope="module")
def quick_run(smtp_sink: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-out")
    work = tmp_path_factory.mktemp("bench-work")
    command = ["bash", str(REPO / "bench" / "run"), "--quick", "--out", str(out)]
    result = subprocess.run(
        [*command, "--work-dir", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert result.returncode == 0, (
        f"bench/run --quick exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    return out


def test_quick_run_fills_the_results_section_with_both_tables(quick_run: Path) -> None:
    doc = (quick_run / "benchmarks.md").read_text(encoding="utf-8")
    begin, end = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
    assert doc.count(begin) == 1
    assert doc.count(end) == 1
    section = doc.split(begin)[1].split(end)[0]
    assert "commit `" in section
    assert "| workers | ideal/s | service/s |" in section
    assert "| 1 (sequential) | 20 |" in section
    assert "| 10 | 200 |" in section
    assert "| workers | service/s | plain loop/s |" in section
    assert "\n| 50 | " in section
    assert "](benchmark-throughput.png)" in section
    assert "Problems seen" not in section


def test_quick_run_reports_the_transient_failure_pair_side_by_side(quick_run: Path) -> None:
    doc = (quick_run / "benchmarks.md").read_text(encoding="utf-8")
    assert "**Transient failures**" in doc
    assert "| workers | failure-free/s | failing once/s |" in doc
    results = json.loads((quick_run / "benchmark-results.json").read_text(encoding="utf-8"))
    pair = [p for p in results["points"] if p["series"] == "failures"]
    assert sorted(p["fail_share"] for p in pair) == [0.0, 0.05]
    assert {(p["program"], p["target"], p["workers"]) for p in pair} == {("service", "latency", 10)}
    free, failing = sorted(pair, key=lambda p: p["fail_share"])
    assert free["retries"] == 0
    # 5 % of about 210 messages: none failing at all would take odds of about 1 in 50,000.
    assert failing["retries"] >= 1


def test_quick_run_draws_a_png_chart(quick_run: Path) -> None:
    data = (quick_run / "benchmark-throughput.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 560)


def test_quick_run_records_every_point_in_json(quick_run: Path) -> None:
    results = json.loads((quick_run / "benchmark-results.json").read_text(encoding="utf-8"))
    assert results["mode"] == "quick"
    assert results["machine"]["cores"] >= 1
    measured = {(p["program"], p["target"], p["workers"]) for p in results["points"]}
    assert measured == {
        (program, target, workers)
        for program in ("service", "plain")
        for target, workers in (("latency", 1), ("latency", 10), ("zero", 50))
    }
    for point in results["points"]:
        assert point["problems"] == [], point
        assert point["window_emails"] > 0
        for key in ("throughput", "cpu_ms_per_email", "peak_rss_mb", "window_seconds"):
            assert math.isfinite(point[key]), (key, point)
            assert point[key] >= 0, (key, point)
        if point["program"] == "service":
            assert point["latency_samples"] > 0
            assert point["p50_ms"] is not None
            assert point["p99_ms"] >= point["p50_ms"]
