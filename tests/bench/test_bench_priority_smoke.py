"""``python -m bench --priority --priority-quick`` runs end to end and writes its section.

It checks the shape of the section only: the latencies and rates depend on timing and belong
to the benchmark, never to a pass/fail test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_priority_mode_writes_its_latency_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--priority",
            "--priority-quick",
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
    assert done.returncode == 0, done.stdout + done.stderr
    doc = (tmp_path / "out" / "benchmarks.md").read_text()
    section = doc.split("<!-- bench:priority:begin -->")[1].split("<!-- bench:priority:end -->")[0]
    assert re.search(r"^\| idle service \| \d+ ms \| \d+ ms \| \d+ ms \|$", section, re.M)
    assert re.search(r"^\| behind 2,000 waiting \| \d+ ms \| \d+ ms \| \d+ ms \|$", section, re.M)
    assert "normal lane:" in section
