"""Real spam filters for deliverability tests: SpamAssassin and a private rspamd, offline.

Both come from Debian's packages (``scripts/fetch-filters``). They run without a network
(``unshare -n``, where this machine allows it) and with their network tests off, so a score
depends on the message alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

_STATUS = re.compile(rb"^X-Spam-Status: (.*?)(?=^\S)", re.MULTILINE | re.DOTALL)
_SCORE = re.compile(r"score=(-?[0-9.]+)")
_TESTS = re.compile(r"tests=(\S*)")
_RSPAMD_SCORE = re.compile(r"^Score: (-?[0-9.]+) /", re.MULTILINE)
_RSPAMD_SYMBOL = re.compile(r"^Symbol: (\S+) \((-?[0-9.]+)\)", re.MULTILINE)
# Modules that would ask DNS or HTTP; off, so nothing waits for a network that is not there.
_NETWORK_MODULES = (
    "rbl",
    "fuzzy_check",
    "dkim",
    "spf",
    "dmarc",
    "asn",
    "phishing",
    "url_redirector",
    "emails",
    "surbl",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    rules: dict[str, float]

    @property
    def message_score(self) -> float:
        """The score without rspamd's HFILTER_* (about the connecting host, not the message)."""
        return sum(value for name, value in self.rules.items() if not name.startswith("HFILTER_"))

    def matching(self, *patterns: str) -> list[str]:
        """Rules whose name matches any of the regular expressions ``patterns``."""
        return [name for name in self.rules if any(re.fullmatch(p, name) for p in patterns)]


def missing(*programs: str) -> str | None:
    """Why the filters cannot run here, or None. Under CI=true, a failure instead of a skip."""
    absent = [program for program in programs if shutil.which(program) is None]
    if not absent:
        return None
    reason = f"{', '.join(absent)} not installed (scripts/fetch-filters installs them as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    return reason


def _isolated() -> bool:
    """Whether ``unshare -n`` works here (root, or a kernel allowing it)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


ISOLATED = _isolated()


def spamassassin(message: bytes) -> Verdict:
    """SpamAssassin's score and rules for ``message``: local tests only (``-L``)."""
    command = ["spamassassin", "-L", "-t"]
    if ISOLATED:
        command = ["unshare", "-n", *command]
    result = subprocess.run(command, input=message, capture_output=True, timeout=120, check=True)
    found = _STATUS.search(result.stdout)
    assert found is not None, result.stdout[:2000]
    status = re.sub(r",\s+", ",", re.sub(r"\s+", " ", found.group(1).decode()))
    score = _SCORE.search(status)
    tests = _TESTS.search(status)
    assert score is not None, status
    names = tests.group(1).split(",") if tests and tests.group(1) != "none" else []
    return Verdict(float(score.group(1)), {name: 0.0 for name in names if name})


class Rspamd:
    """A private rspamd daemon (normal worker only), network modules off, in its own netns."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 11333 if ISOLATED else _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def _configure(self) -> None:
        override = self.folder / "override.d"
        local = self.folder / "local.d"
        for path in (override, local, self.folder / "db", self.folder / "run", self.folder / "log"):
            path.mkdir(parents=True, exist_ok=True)
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\ncount = 1;\n'
        )
        (override / "worker-controller.inc").write_text("count = -1;\n")
        (override / "worker-proxy.inc").write_text("count = -1;\n")
        (override / "logging.inc").write_text('type = "console";\nlevel = "error";\n')
        (override / "options.inc").write_text(
            'dns { nameserver = ["127.0.0.1:53"]; timeout = 0.2s; retransmits = 0; }\n'
        )
        for module in _NETWORK_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")

    def start(self) -> None:
        self._configure()
        folder = self.folder
        daemon = [
            "rspamd",
            "-f",
            "-i",
            "-c",
            "/etc/rspamd/rspamd.conf",
            f"--var=LOCAL_CONFDIR={folder}",
            f"--var=DBDIR={folder / 'db'}",
            f"--var=RUNDIR={folder / 'run'}",
            f"--var=LOGDIR={folder / 'log'}",
        ]
        if os.geteuid() == 0:
            daemon += ["-u", "root", "-g", "root"]
        if ISOLATED:
            script = 'ip link set lo up 2>/dev/null || true; exec "$@"'
            daemon = ["unshare", "-n", "sh", "-c", script, "rspamd", *daemon]
        with (folder / "daemon.log").open("wb") as log:  # the daemon keeps its own copy
            self._process = subprocess.Popen(daemon, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a bound on a broken start, not a measurement
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rspamd did not start: {(folder / 'daemon.log').read_text()}")
            time.sleep(0.2)

    def _rspamc(self, *arguments: str, message: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        command = ["rspamc", "-h", f"127.0.0.1:{self.port}", *arguments]
        if ISOLATED:
            assert self._process is not None
            command = ["nsenter", "-t", str(self._process.pid), "-n", *command]
        return subprocess.run(command, input=message, capture_output=True, timeout=60)

    def _answers(self) -> bool:
        result = self._rspamc("symbols", message=b"Subject: ping\r\n\r\nping\r\n")
        return result.returncode == 0 and b"Score:" in result.stdout

    def check(self, message: bytes) -> Verdict:
        result = self._rspamc(
            "--helo=mail.shop.example.com",
            "--hostname=mail.shop.example.com",
            "--ip=192.0.2.10",
            "--from=no-reply@shop.example.com",
            "symbols",
            message=message,
        )
        text = result.stdout.decode()
        score = _RSPAMD_SCORE.search(text)
        assert result.returncode == 0, text + result.stderr.decode()
        assert score is not None, text
        rules = {name: float(value) for name, value in _RSPAMD_SYMBOL.findall(text)}
        return Verdict(float(score.group(1)), rules)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def rspamd(folder: Path) -> Iterator[Rspamd]:
    daemon = Rspamd(folder)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


OPENDKIM = shutil.which("opendkim") or (
    "/usr/sbin/opendkim" if os.access("/usr/sbin/opendkim", os.X_OK) else None
)


def opendkim_verify(message: bytes, *, dns_name: str, record: str, folder: Path) -> str:
    """OpenDKIM's verdict on ``message`` (its Authentication-Results ``dkim=`` result).

    Test mode (``-t``), with the public key from ``TestPublicKeys`` instead of DNS.
    """
    assert OPENDKIM is not None
    keys = folder / "keys"
    keys.write_text(f"{dns_name} {record}\n")
    config = folder / "opendkim.conf"
    config.write_text(f"Mode v\nTestPublicKeys {keys}\nSyslog no\n")
    path = folder / "message.eml"
    path.write_bytes(message)
    command = [OPENDKIM, "-x", str(config), "-vvv", "-t", str(path)]
    if ISOLATED:
        command = ["unshare", "-n", *command]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    found = re.search(r"dkim=(\w+)", output)
    assert found is not None, output
    return found.group(1)
