"""A child's side of ``run --processes``: what the supervisor tells it, and dying with it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

_INDEX = "SERVICE_CHILD_INDEX"
_SUPERVISOR = "SERVICE_SUPERVISOR_PID"
_PORT_FILE = "SERVICE_CHILD_PORT_FILE"
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ChildRole:
    """Set by the supervisor in a child's environment; absent in a process of its own."""

    index: int
    supervisor_pid: int
    port_file: Path

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ChildRole | None:
        if _INDEX not in environ:
            return None
        return cls(
            index=int(environ[_INDEX]),
            supervisor_pid=int(environ[_SUPERVISOR]),
            port_file=Path(environ[_PORT_FILE]),
        )

    def environment(self, metrics_dir: Path) -> dict[str, str]:
        return {
            _INDEX: str(self.index),
            _SUPERVISOR: str(self.supervisor_pid),
            _PORT_FILE: str(self.port_file),
            METRICS_DIR: str(metrics_dir),
        }

    def write_port(self, port: int) -> None:
        """Tell the supervisor where this child's /healthz and /readyz answer (atomically)."""
        partial = self.port_file.with_suffix(".partial")
        partial.write_text(str(port), encoding="ascii")
        partial.replace(self.port_file)


def die_with_supervisor(role: ChildRole, stop: Callable[[], None]) -> bool:
    """Ask the kernel for SIGTERM when the supervisor dies, so the child drains and exits.

    Returns False where prctl is not available (not Linux); the caller then watches the parent
    itself. If the supervisor is already gone (it died before the request), stop at once.
    """
    armed = _set_parent_death_signal(signal.SIGTERM)
    if orphaned(role):
        stop()
    return armed


def orphaned(role: ChildRole) -> bool:
    return os.getppid() != role.supervisor_pid


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):  # pragma: no cover - Linux only
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0
