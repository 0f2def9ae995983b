""".env.example against the code: every setting, one comment line each, the real defaults."""

from __future__ import annotations

import re

import pytest

from messaging_service.config import load_settings
from support.tools import ENV_EXAMPLE, settings_variables

pytestmark = pytest.mark.deploy

_ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def example_lines() -> list[str]:
    return ENV_EXAMPLE.read_text().splitlines()


def example_variables() -> dict[str, bool]:
    """Variable -> whether it is set (False: a commented-out optional setting)."""
    found = {}
    for line in example_lines():
        match = _ASSIGNMENT.match(line)
        if match:
            found[match.group(2)] = match.group(1) is None
    return found


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    assert set(example_variables()) == set(settings_variables())


def test_every_setting_has_a_comment_line_above_it() -> None:
    lines = example_lines()
    for number, line in enumerate(lines):
        if _ASSIGNMENT.match(line):
            above = lines[number - 1]
            assert above.startswith("# "), line
            assert not _ASSIGNMENT.match(above), line


def test_env_example_values_are_the_defaults_of_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its values are valid, and what an unset variable would give (so it cannot drift)."""
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    from_example = load_settings(env_file=ENV_EXAMPLE)
    defaults = load_settings(env_file=None)
    assert from_example == defaults
    # A setting is commented out exactly when the code leaves it unset by default.
    assert example_variables() == settings_variables()
