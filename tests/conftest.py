"""Shared test set-up: importable test support code and timing-free hypothesis settings."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# Machines are shared and noisy: no test may pass or fail on timing, hypothesis included.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")
