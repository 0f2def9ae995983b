"""A real Apache Kafka broker for integration tests, started from ``../shared/kafka``.

    with ApacheKafkaBroker(tmp_path / "kafka") as broker:   # a KRaft node on free ports
        await create_topic(broker.bootstrap, "requests", partitions=3)
        broker.restart()                                     # same ports, same storage

The broker is the shared distribution's ``kafka`` script (``kafka start|stop STATE_DIR``),
found beside the repository (``<repo>/../shared/kafka``) or at ``TEST_KAFKA_HOME``. It needs
Java 17+. Unlike the embedded Tansu, a restart keeps every topic, record and committed offset:
they live in the state directory. The distribution is unpacked once per parent of state
directories (``<parent>/.kafka-dist``), so brokers started side by side share it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from messaging_service.dev.embedded import BrokerStartError

KAFKA_HOME_ENV = "TEST_KAFKA_HOME"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KAFKA_HOME = REPO_ROOT.parent / "shared" / "kafka"
_START_ATTEMPTS = 2
_log = logging.getLogger(__name__)


def kafka_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where the ``kafka`` script lives: ``TEST_KAFKA_HOME``, else ``<repo>/../shared/kafka``."""
    value = (os.environ if environ is None else environ).get(KAFKA_HOME_ENV, "").strip()
    return Path(value) if value else DEFAULT_KAFKA_HOME


def missing(environ: Mapping[str, str] | None = None) -> str | None:
    """Why Apache Kafka cannot be started here (no script, no Java), or None when it can."""
    home = kafka_home(environ)
    if not (home / "kafka").is_file():
        return (
            f"no Apache Kafka at {home} (expected the shared distribution's 'kafka' script "
            f"there; set {KAFKA_HOME_ENV} to its directory)"
        )
    if not java_found(environ):
        return "Apache Kafka needs Java 17+: no java on PATH or JAVA_HOME"
    return None


def java_found(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``kafka`` script will find a Java (the same places it looks)."""
    env = os.environ if environ is None else environ
    java_home = env.get("JAVA_HOME", "")
    if java_home:
        return os.access(Path(java_home) / "bin" / "java", os.X_OK)
    if shutil.which("java", path=env.get("PATH")):
        return True
    jvms = Path("/usr/lib/jvm")
    candidates = [*jvms.glob("java-1[7-9]*/bin/java"), *jvms.glob("java-2[0-9]*/bin/java")]
    return any(os.access(candidate, os.X_OK) for candidate in candidates)


class ApacheKafkaBroker:
    """Apache Kafka 3.6 (one KRaft node) in ``state_dir``, on 127.0.0.1 ports it picks.

    ``start()`` returns once the broker serves (the script waits for "Kafka Server started").
    ``restart()`` stops it cleanly and starts it again on the same state directory: same
    ports, same topics, records and committed offsets. ``close()`` stops it and, when this
    object made the state directory (``state_dir=None``), removes it.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        home: Path | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 60.0,
        extra_config: str = "",
    ) -> None:
        # Lines appended to server.properties; the tests use none: Apache Kafka's defaults.
        self._state_dir = state_dir  # None: a temporary directory, made on start
        self._own_state_dir = state_dir is None
        self._home = home or kafka_home()
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._extra_config = extra_config
        self._bootstrap: str | None = None
        self._running = False

    @property
    def bootstrap(self) -> str:
        if self._bootstrap is None:
            raise RuntimeError("the broker has not been started yet")
        return self._bootstrap

    @property
    def running(self) -> bool:
        return self._running

    @property
    def state_dir(self) -> Path | None:
        return self._state_dir

    @property
    def script(self) -> Path:
        return self._home / "kafka"

    def start(self) -> None:
        if self._running:
            return
        reason = missing({**os.environ, KAFKA_HOME_ENV: str(self._home)})
        if reason is not None:
            raise BrokerStartError(reason)
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="kafka-")) / "state"
        # Once in a full run on a loaded machine, a restart's JVM printed nothing for the
        # script's 60 s: one more try, logging what the stuck processes were doing.
        for attempt in range(1, _START_ATTEMPTS + 1):
            answer = self._run("start", self._start_timeout)
            values = dict(line.split("=", 1) for line in answer.stdout.splitlines() if "=" in line)
            if answer.returncode == 0 and "BOOTSTRAP" in values:
                break
            failure = (
                f"kafka start {self._state_dir} exited with {answer.returncode}\n"
                f"{answer.stdout}{answer.stderr}{self._processes()}\n{self.log_tail()}"
            )
            self._run("stop", self._stop_timeout)  # a half-started broker must not linger
            if attempt == _START_ATTEMPTS:
                raise BrokerStartError(failure)
            _log.warning("Apache Kafka did not start, trying again: %s", failure)
        bootstrap = values["BOOTSTRAP"].strip()
        if self._bootstrap is not None and bootstrap != self._bootstrap:
            raise BrokerStartError(f"restarted on {bootstrap}, not on {self._bootstrap}")
        self._bootstrap = bootstrap
        self._running = True

    def stop(self) -> None:
        """A clean stop (SIGTERM, then SIGKILL after the script's 30 s); idempotent."""
        if not self._running:
            return
        self._running = False
        self._run("stop", self._stop_timeout)
        assert self._state_dir is not None
        # The pid is stale now: a later `kafka stop` (scripts/test's clean-up) must not find it.
        (self._state_dir / "kafka.pid").unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop and start again on the same state directory: ports and data are kept."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir.parent, ignore_errors=True)
            self._state_dir = None

    def log_tail(self, lines: int = 40) -> str:
        if self._state_dir is None:
            return "(no broker log)"
        path = self._state_dir / "logs" / "stdout.log"
        if not path.is_file():
            return "(no broker log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _processes(self) -> str:
        """The broker's process and its children (state, kernel wait channel), for a report."""
        assert self._state_dir is not None
        try:
            pid = int((self._state_dir / "kafka.pid").read_text())
            table = subprocess.run(
                ["ps", "-e", "-o", "pid=,ppid=,stat=,wchan:24=,etime=,args="],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return f"(no process table: {exc})"
        rows = [line.split(None, 5) for line in table.splitlines()]
        family, lines = {pid}, []
        for _ in range(5):  # a few generations: script -> java -version, or the JVM itself
            for row in rows:
                if len(row) == 6 and (int(row[0]) in family or int(row[1]) in family):
                    family.add(int(row[0]))
        for row in rows:
            if len(row) == 6 and int(row[0]) in family:
                lines.append(" ".join(row)[:300])
        return "processes:\n" + ("\n".join(lines) or f"(pid {pid} is gone)")

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        assert self._state_dir is not None
        try:
            return subprocess.run(
                [str(self.script), command, str(self._state_dir)],
                # Set, not inherited: a KAFKA_EXTRA_CONFIG in the environment must not change
                # the broker the tests run on.
                env={**os.environ, "KAFKA_EXTRA_CONFIG": self._extra_config},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerStartError(
                f"kafka {command} {self._state_dir}: no answer within {timeout}s\n{self.log_tail()}"
            ) from exc

    def __enter__(self) -> ApacheKafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ApacheKafkaBroker(bootstrap={self._bootstrap}, running={self._running}, "
            f"state={self._state_dir})"
        )
