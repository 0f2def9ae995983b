"""``run --processes``: how many, the children's names, and what a child is told."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from messaging_service.child import ChildRole, orphaned
from messaging_service.config import ConfigError, load_settings
from messaging_service.supervisor import instance_base, process_count, usable_cpus


@pytest.mark.parametrize(
    ("value", "expected"), [("3", 3), ("1", 1), ("auto", "auto"), (" AUTO ", "auto")]
)
def test_service_processes_takes_a_count_or_auto(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int | str
) -> None:
    monkeypatch.setenv("SERVICE_PROCESSES", value)
    assert load_settings(env_file=None).runtime.service_processes == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_service_processes_refuses_anything_else(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SERVICE_PROCESSES", value)
    with pytest.raises(ConfigError, match="SERVICE_PROCESSES"):
        load_settings(env_file=None)


def test_auto_is_the_cpus_this_process_may_use() -> None:
    assert process_count("auto") == usable_cpus() == len(os.sched_getaffinity(0))
    assert process_count(4) == 4


def test_instance_names_prefer_the_explicit_id_then_the_instance_name_then_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "host-a")
    assert instance_base(load_settings(env_file=None)) == "host-a"
    monkeypatch.setenv("SERVICE_INSTANCE_NAME", "mailer")
    assert instance_base(load_settings(env_file=None)) == "mailer"
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "pinned")
    assert instance_base(load_settings(env_file=None)) == "pinned"


def test_a_child_reads_its_role_from_the_environment_the_supervisor_writes(
    tmp_path: Path,
) -> None:
    role = ChildRole(index=1, supervisor_pid=os.getppid(), port_file=tmp_path / "child-1.port")
    environ = role.environment(tmp_path / "metrics")
    assert environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics")
    assert ChildRole.from_environment(environ) == role
    assert ChildRole.from_environment({}) is None
    role.write_port(8123)
    assert role.port_file.read_text() == "8123"
    assert not orphaned(role)
    assert orphaned(ChildRole(index=1, supervisor_pid=1, port_file=role.port_file))
