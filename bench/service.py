"""The real service as a child process: ``python -m messaging_service run`` with env vars."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from support.kafka import GROUP_TIMEOUTS, BrokerKind

from .content import SENDER
from .sinks import HOST, free_port

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    bootstrap: str
    topic: str
    dlq_topic: str
    group: str
    smtp_port: int
    workers: int
    log_level: str = "INFO"
    extra_env: tuple[tuple[str, str], ...] = ()
    """More settings as environment variables, e.g. (("EMAIL_RETRY_DELAYS", "3"),), or the
    DKIM_* settings of the content variants."""


def environment(config: ServiceConfig, *, http_port: int) -> dict[str, str]:
    """Production defaults except the group timeouts, lowered for the embedded broker."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_", "DKIM_"))
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": config.bootstrap,
            "KAFKA_TOPIC": config.topic,
            "KAFKA_DLQ_TOPIC": config.dlq_topic,
            "KAFKA_GROUP_ID": config.group,
            **{
                f"KAFKA_{name.upper()}": str(value)
                for name, value in GROUP_TIMEOUTS[BrokerKind.TANSU].items()
            },
            "SMTP_HOST": HOST,
            "SMTP_PORT": str(config.smtp_port),
            "EMAIL_FROM": SENDER,
            "EMAIL_WORKER_COUNT": str(config.workers),
            "HTTP_HOST": HOST,
            "HTTP_PORT": str(http_port),
            "LOG_LEVEL": config.log_level,
            "LOG_FORMAT": "json",
            **dict(config.extra_env),
        }
    )
    return env


class ServiceProcess:
    """One service process; its stdout (JSON logs) goes to a file in the run's folder."""

    def __init__(self, config: ServiceConfig, work_dir: Path) -> None:
        self.http_port = free_port()
        self.log_path = work_dir / f"service-{config.workers}w-{time.monotonic_ns()}.log"
        with self.log_path.open("ab") as log:
            # The run's folder as working directory: no developer's .env is picked up.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "messaging_service", "run"],
                cwd=work_dir,
                env=environment(config, http_port=self.http_port),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self._process.pid

    def check_alive(self) -> None:
        if self._process.poll() is not None:
            raise RuntimeError(
                f"the service exited with {self._process.returncode}:\n{self.log_tail()}"
            )

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {name{labels}: value}."""
        url = f"http://{HOST}:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return parse_metrics(text)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain, commit, exit 0); SIGKILL if it does not exit within ``timeout``."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def metric(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent); label order as the client library writes it."""
    key = name
    if labels:
        key += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    return samples.get(key, 0.0)
