"""A real Apache Kafka broker (``../shared/kafka`` next to the repository) for one test module.

    with ApacheKafka(tmp_path / "kafka") as kafka:   # started; kafka.bootstrap = "127.0.0.1:PORT"
        ...

Unlike Tansu it keeps commit metadata, which is what the offset-map tests need. Group timeouts:
the broker is started with ``group.min.session.timeout.ms=1000`` so that the lowered test
timeouts (``KAFKA_TIMEOUTS``) are accepted, and no initial rebalance delay. ``missing()`` says
why it cannot run here (no script, no java), for a skip reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO.parent / "shared" / "kafka" / "kafka"
# Knowingly below Apache Kafka's defaults: tests kill members and wait out their sessions.
TEST_CONFIG = "group.min.session.timeout.ms=1000\ngroup.initial.rebalance.delay.ms=0"


def missing() -> str | None:
    """Why Apache Kafka cannot be started here, or None when it can."""
    if not SCRIPT.is_file():
        return f"no Apache Kafka at {SCRIPT}"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no java on PATH and no JAVA_HOME (Apache Kafka needs Java 17+)"
    return None


class ApacheKafka:
    """``kafka start`` in ``state_dir`` on enter, ``kafka stop`` on exit."""

    def __init__(self, state_dir: Path, *, extra_config: str = TEST_CONFIG) -> None:
        self.state_dir = state_dir
        self._extra_config = extra_config
        self.bootstrap = ""

    def __enter__(self) -> ApacheKafka:
        env = {**os.environ, "KAFKA_EXTRA_CONFIG": self._extra_config}
        done = subprocess.run(
            ["bash", str(SCRIPT), "start", str(self.state_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        if done.returncode != 0 or "BOOTSTRAP" not in values:
            self.stop()
            raise RuntimeError(f"Apache Kafka did not start:\n{done.stdout}\n{done.stderr}")
        self.bootstrap = values["BOOTSTRAP"]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", str(self.state_dir)],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def restart(self) -> None:
        raise NotImplementedError("the offset-map tests never restart Apache Kafka")
