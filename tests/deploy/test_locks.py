"""The lock files scripts/lock writes: every dependency pinned with hashes, one version each.

requirements.lock (runtime, the image), requirements-embedded.lock (plus the embedded extra,
scripts/dev) and requirements-dev.lock (plus the otel, dev and bench extras, scripts/test and CI).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Each lock file and the extras it must cover besides the runtime dependencies.
LOCKS = {
    "requirements.lock": (),
    "requirements-embedded.lock": ("embedded",),
    "requirements-dev.lock": ("embedded", "otel", "dev", "bench"),
}


def pins(name: str) -> dict[str, tuple[str, int]]:
    """package -> (pinned version, number of hashes)."""
    found: dict[str, tuple[str, int]] = {}
    current = None
    for line in (REPO / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            found[current] = (match.group(2), 0)
        elif current and "--hash=sha256:" in line:
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
        elif re.match(r"^[A-Za-z0-9]", line):
            pytest.fail(f"{name}: not a hashed pin: {line!r}")
    return found


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    wanted = [Requirement(spec) for spec in PROJECT["dependencies"]]
    for extra in extras:
        wanted += [Requirement(spec) for spec in PROJECT["optional-dependencies"][extra]]
    return [r for r in wanted if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])]


@pytest.mark.parametrize("lock", list(LOCKS))
def test_each_lock_pins_its_dependencies_within_their_ranges_with_hashes(lock: str) -> None:
    """Fails when pyproject.toml's dependencies or extras change without `scripts/lock`."""
    locked = pins(lock)
    for requirement in requirements(LOCKS[lock]):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {lock}: run scripts/lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside {requirement.specifier}: run scripts/lock"
        )
    assert not [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert canonicalize_name(PROJECT["name"]) not in locked  # installed from the source


def test_a_package_has_the_same_version_in_every_lock_and_each_lock_extends_the_last() -> None:
    runtime, embedded, dev = (pins(lock) for lock in LOCKS)
    for smaller, larger in ((runtime, embedded), (embedded, dev)):
        assert {name: version for name, (version, _) in smaller.items()} == {
            name: larger[name][0] for name in smaller if name in larger
        }
        assert set(smaller) <= set(larger)


def test_the_build_lock_pins_the_build_backend_the_dockerfile_builds_with() -> None:
    """requirements-build.lock: every [build-system] requirement, in range, with hashes."""
    build_system = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    locked = pins("requirements-build.lock")
    for spec in build_system["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements-build.lock: run scripts/lock"
        assert requirement.specifier.contains(locked[name][0], prereleases=True)
    assert all(hashes for _, hashes in locked.values())


def test_the_checkov_lock_pins_what_its_input_asks_for_with_hashes() -> None:
    """requirements-checkov.lock (a venv of its own, scripts/fetch-tools) follows its .in file."""
    locked = pins("requirements-checkov.lock")
    for line in (REPO / "requirements-checkov.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            version = locked[canonicalize_name(requirement.name)][0]
            assert requirement.specifier.contains(version), f"{line}: run scripts/lock"
    assert all(hashes for _, hashes in locked.values())


def test_the_otel_lock_is_the_runtime_lock_plus_the_otel_extra() -> None:
    """requirements-otel.lock: what the image installs with WITH_OTEL=true."""
    runtime, otel, dev = (
        pins(lock)
        for lock in ("requirements.lock", "requirements-otel.lock", "requirements-dev.lock")
    )
    for requirement in requirements(("otel",)):
        name = canonicalize_name(requirement.name)
        assert name in otel, f"{name} is not in requirements-otel.lock: run scripts/lock"
        assert requirement.specifier.contains(otel[name][0], prereleases=True)
    for package, (version, _) in otel.items():
        assert version == runtime.get(package, dev[package])[0], package
    assert set(runtime) <= set(otel)
    assert all(hashes for _, hashes in otel.values())
