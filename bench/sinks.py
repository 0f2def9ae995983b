"""The SMTP servers the benchmark sends to, each its own process, each recording acceptances.

- ``SmtpSink``: Postfix's smtp-sink (C), the zero-latency target that is never the bottleneck.
  It dumps every message to a file in a tmpfs folder; a file's modification time is the
  moment the message's last byte arrived, right before the ``250``.
- ``DelaySink``: ``bench.delay_sink``, answers each message after a delay (the slow relay).
  It logs ``<unix time> <email id>`` per accepted message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .tools import REPO, ensure_smtp_sink, smtp_sink_environment

HOST = "127.0.0.1"
_ID_HEADER = b"\nX-Email-Id: "


@dataclass(frozen=True, slots=True)
class Acceptance:
    at: float
    email_id: str


class Sink(Protocol):
    label: str
    port: int
    pid: int

    def accepted(self) -> int: ...
    def acceptances(self, *, ids_since: float | None = None) -> list[Acceptance]: ...
    def stop(self) -> None: ...


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(process: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port} after 15 s: {_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _dump_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class SmtpSink:
    """smtp-sink on a free port, dumping each message to its own file in tmpfs."""

    label = "smtp-sink"

    def __init__(self, work_dir: Path, *, dump: bool = True) -> None:
        binary = ensure_smtp_sink()
        self._dump_dir: Path | None = (
            Path(tempfile.mkdtemp(prefix="bench-sink-", dir=_dump_root())) if dump else None
        )
        self._log = work_dir / "smtp-sink.log"
        self.port = free_port()
        command = [str(binary), "-m", "2000"]  # at most 2,000 sessions at once (default 256)
        if os.geteuid() == 0:
            command += ["-u", "root"]  # it refuses to run as root without being told so
        if self._dump_dir is not None:
            # strftime, then smtp-sink appends a random hex number: <unix seconds>.<hex>
            command += ["-d", f"{self._dump_dir}/%s."]
        command += [f"{HOST}:{self.port}", "1000"]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command, env=smtp_sink_environment(), stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self._process.pid
        _wait_listening(self._process, self.port, "smtp-sink", self._log)

    def accepted(self) -> int:
        if self._dump_dir is None:
            raise RuntimeError("this smtp-sink does not dump messages, so it cannot count them")
        return len(os.listdir(self._dump_dir))

    def acceptances(self, *, ids_since: float | None = None) -> list[Acceptance]:
        """Every message's arrival time; its email id too when it arrived after ``ids_since``."""
        if self._dump_dir is None:
            return []
        found = []
        with os.scandir(self._dump_dir) as entries:
            for entry in entries:
                at = entry.stat().st_mtime_ns / 1e9
                email_id = "-"
                if ids_since is not None and at >= ids_since:
                    email_id = _email_id(Path(entry.path))
                found.append(Acceptance(at, email_id))
        found.sort(key=lambda acceptance: acceptance.at)
        return found

    def stop(self) -> None:
        _stop(self._process)
        if self._dump_dir is not None:
            shutil.rmtree(self._dump_dir, ignore_errors=True)


def _email_id(path: Path) -> str:
    head = path.read_bytes()[:4096]
    start = head.find(_ID_HEADER)
    if start < 0:
        return "-"
    start += len(_ID_HEADER)
    end = head.find(b"\n", start)
    return head[start:end].decode("ascii", "replace").strip()


class DelaySink:
    """``python -m bench.delay_sink``: the ``250`` after each message comes ``delay`` s later."""

    def __init__(
        self,
        work_dir: Path,
        *,
        delay: float,
        jitter: float = 0.0,
        fail_share: float = 0.0,
        fail_every: int = 0,
    ) -> None:
        self.label = f"delay sink {delay * 1000:g} ms"
        self._accept_log = work_dir / f"accepted-{time.monotonic_ns()}.log"
        self._accept_log.touch()
        self._log = work_dir / "delay-sink.log"
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "bench.delay_sink",
            "--port",
            str(self.port),
            "--delay",
            str(delay),
            "--jitter",
            str(jitter),
            "--fail-share",
            str(fail_share),
            "--fail-every",
            str(fail_every),
            "--log",
            str(self._accept_log),
        ]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self._process.pid
        _wait_listening(self._process, self.port, "the delay sink", self._log)
        self._counted = 0
        self._read_to = 0

    def accepted(self) -> int:
        with self._accept_log.open("rb") as stream:
            stream.seek(self._read_to)
            chunk = stream.read()
        # Only whole lines count; a partly written one is read again next time.
        whole = chunk.rfind(b"\n") + 1
        self._counted += chunk.count(b"\n", 0, whole)
        self._read_to += whole
        return self._counted

    def acceptances(self, *, ids_since: float | None = None) -> list[Acceptance]:
        found = []
        for line in self._accept_log.read_text(encoding="ascii").splitlines():
            at, _, email_id = line.partition(" ")
            found.append(Acceptance(float(at), email_id))
        found.sort(key=lambda acceptance: acceptance.at)
        return found

    def stop(self) -> None:
        _stop(self._process)  # it flushes its log on SIGTERM
