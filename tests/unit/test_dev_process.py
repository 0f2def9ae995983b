"""The server-process runner of dev mode and the tests: start, readiness, stop, restart."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from messaging_service.dev.process import (
    ProcessExitedError,
    ProcessNotReadyError,
    ServerProcess,
    port_answers,
)

# A child that listens on the port it is given, says so, and exits 0 on SIGTERM.
LISTENER = """
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
while True:
    server.accept()[0].close()
"""
# A child that ignores SIGTERM: only SIGKILL ends it.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
while True:
    time.sleep(1)
"""


def logged(process: ServerProcess, line: str) -> bool:
    """Whether the child wrote ``line`` (the log's first lines are its command, script included)."""
    return line in process.log_tail(100).splitlines()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_start_logs_the_command_and_its_output_and_stop_ends_it(tmp_path: Path) -> None:
    port = free_port()
    process = ServerProcess(stop_timeout=5)
    command = [sys.executable, "-c", LISTENER, str(port)]
    process.start(command, log_path=tmp_path / "logs" / "server.log")
    try:
        process.wait_ready(lambda: port_answers(port), timeout=10)
    finally:
        status = process.stop()
    assert status == 0  # it got SIGTERM and exited by itself
    assert not process.running
    assert not port_answers(port)
    assert process.log_tail().startswith("--- ")
    assert f"starting: {sys.executable} -c" in process.log_tail()
    assert logged(process, "listening")
    assert process.stop() is None  # idempotent


def test_restart_runs_the_command_again_appending_to_the_log(tmp_path: Path) -> None:
    port = free_port()
    process = ServerProcess(stop_timeout=5)
    command = [sys.executable, "-c", LISTENER, str(port)]
    log = tmp_path / "server.log"
    process.start(command, log_path=log)
    try:
        process.wait_ready(lambda: port_answers(port), timeout=10)
        process.restart(command, log_path=log)
        process.wait_ready(lambda: port_answers(port), timeout=10)
    finally:
        process.stop()
    assert log.read_text().splitlines().count("listening") == 2
    assert log.read_text().count("--- ") == 2


def test_a_process_that_ignores_the_stop_signal_is_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    process = ServerProcess(stop_signal=signal.SIGTERM, stop_timeout=0.5)
    process.start([sys.executable, "-c", STUBBORN], log_path=tmp_path / "log")
    process.wait_ready(lambda: logged(process, "ignoring SIGTERM"), timeout=10)
    assert process.stop() == -signal.SIGKILL
    assert not process.running


def test_a_process_that_exits_while_awaited_says_with_which_code() -> None:
    process = ServerProcess()
    process.start([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(ProcessExitedError) as failure:
        process.wait_ready(lambda: False, timeout=10)
    assert failure.value.returncode == 3
    assert process.started
    assert not process.running
    assert process.stop() == 3
    assert not process.started


def test_a_process_that_never_gets_ready_times_out() -> None:
    process = ServerProcess(stop_timeout=5)
    process.start([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ProcessNotReadyError):
            process.wait_ready(lambda: False, timeout=0.3)
        assert process.running
    finally:
        process.stop()


def test_starting_a_running_process_again_is_refused() -> None:
    process = ServerProcess(stop_timeout=5)
    process.start([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match="already running"):
            process.start([sys.executable, "-c", "pass"])
    finally:
        process.stop()
