"""``python -m bench --crash`` runs end to end on a small backlog and writes its table.

It checks the shape of the doc section and one invariant of the mechanism (with the map, the
restart skips exactly the offsets the committed maps listed), never how many duplicates there
were: that depends on timing and belongs to the benchmark.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.apache_kafka import missing

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

_ROW = re.compile(
    r"^\| (\d+) \| (on|off) \([\d,]+\) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| "
    r"([\d,]+) \| (\d+)% \|$",
    re.M,
)


def test_crash_mode_writes_one_row_per_run(tmp_path: Path) -> None:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--crash",
            "--crash-runs",
            "1",
            "--crash-requests",
            "200",
            "--crash-kill-after",
            "80",
            "--partitions",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = (tmp_path / "out" / "benchmarks.md").read_text()
    section = doc.split("<!-- bench:crash:begin -->")[1].split("<!-- bench:crash:end -->")[0]
    rows = _ROW.findall(section)
    assert [row[1] for row in rows] == ["on", "off"]
    for _, flag, sent, _committed, mapped, skipped, _duplicates, _share in rows:
        assert int(sent.replace(",", "")) >= 80
        if flag == "on":
            assert skipped == mapped
        else:
            assert (mapped, skipped) == ("0", "0")
