"""One server process owned by dev mode or a test: started, waited for, stopped, restarted.

    process = ServerProcess(stop_signal=signal.SIGINT, stop_timeout=5.0)
    process.start(command, log_path=logs / "tansu.log")  # its output appended to the log
    process.wait_ready(lambda: port_answers(port), timeout=20.0)
    process.restart(command, log_path=logs / "tansu.log")  # stop, then start again
    process.stop()                                   # stop_signal, SIGKILL after the grace

The embedded broker (``embedded.py``) and the test suite's servers (``tests/support``) run
their processes through it; what "ready" means, and what a failure is called, stays theirs.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

_POLL_INTERVAL = 0.05


class ProcessExitedError(RuntimeError):
    """The process exited while it was being waited for."""

    def __init__(self, returncode: int) -> None:
        super().__init__(f"exited with {returncode}")
        self.returncode = returncode


class ProcessNotReadyError(RuntimeError):
    """The readiness check did not pass within the timeout."""


class ServerProcess:
    """A child process whose output goes to a log file (or nowhere).

    ``stop()`` sends ``stop_signal`` and, if the process has not exited within
    ``stop_timeout`` seconds, SIGKILL; it is idempotent. ``new_session`` keeps a Ctrl-C in the
    terminal away from the child, so that only its owner decides when it stops;
    ``die_with_parent`` has Linux kill it when its owner dies outright.
    """

    def __init__(
        self,
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 30.0,
        new_session: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        self.log_path: Path | None = None
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._new_session = new_session
        self._die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def started(self) -> bool:
        """Started and not stopped since (it may have exited by itself)."""
        return self._process is not None

    def start(
        self,
        command: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``command``; a line naming it, then its output, is appended to ``log_path``.

        Without ``log_path`` the output is discarded; without ``env`` the child inherits ours.
        """
        if self.running:
            raise RuntimeError("the process is already running")
        preexec = _die_with_parent if self._die_with_parent and _can_die_with_parent() else None
        self.log_path = log_path
        if log_path is None:
            self._process = self._spawn(command, env, subprocess.DEVNULL, preexec)
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(command)}\n".encode())
            log.flush()
            self._process = self._spawn(command, env, log, preexec)

    def wait_ready(self, ready: Callable[[], bool], *, timeout: float) -> None:
        """Return once ``ready()`` is true; raise ProcessExitedError or ProcessNotReadyError."""
        process = self._process
        if process is None:
            raise RuntimeError("the process has not been started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ProcessExitedError(process.returncode)
            if ready():
                return
            time.sleep(_POLL_INTERVAL)
        raise ProcessNotReadyError(f"not ready within {timeout}s")

    def stop(self) -> int | None:
        """Send the stop signal, then SIGKILL if it has not exited within the grace period.

        Returns the exit status (negative: the signal that ended it), or None if no process
        was started since the last stop.
        """
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(self._stop_signal)
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self._stop_timeout)
        return process.returncode

    def restart(
        self,
        command: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Stop (as ``stop()``), then start again."""
        self.stop()
        self.start(command, log_path=log_path, env=env)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, or "" when there is none."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _spawn(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None,
        output: int | IO[bytes],
        preexec: Callable[[], None] | None,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=self._new_session,
            preexec_fn=preexec,
        )


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _can_die_with_parent() -> bool:
    # The death signal follows the forking *thread*: from a worker thread (asyncio.to_thread)
    # the child would die with that thread, long before its owner is done with it.
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    # If the owner is killed outright, the child goes with it instead of lingering.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
