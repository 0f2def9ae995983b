"""Shared test set-up: importable test support code and timing-free hypothesis settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# Machines are shared and noisy: no test may pass or fail on timing, hypothesis included.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")


# scripts/test's second pass (the integration tests on Apache Kafka) sets this: a test that
# never touches the session's broker (SMTP, Redis, a broker of its own kind) ran in the first.
BROKER_TESTS_ONLY_ENV = "TEST_BROKER_TESTS_ONLY"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``TEST_BROKER_TESTS_ONLY=1``, deselect tests that do not use the ``broker`` fixture."""
    if os.environ.get(BROKER_TESTS_ONLY_ENV, "").strip() != "1":
        return
    kept = [item for item in items if "broker" in getattr(item, "fixturenames", ())]
    dropped = [item for item in items if "broker" not in getattr(item, "fixturenames", ())]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
