"""Benchmark suite for messaging-service: ``bash bench/run`` (see docs/benchmarks.md).

The embedded Kafka broker helpers live with the test support code (tests/support/kafka.py),
so that folder is put on the import path for every module of this package.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
