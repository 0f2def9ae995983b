"""Postfix's smtp-sink, fetched from Debian into the repo's .tools/ without a system install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / ".tools"
POSTFIX = TOOLS / "postfix"
SMTP_SINK = POSTFIX / "usr" / "sbin" / "smtp-sink"
LIBRARIES = POSTFIX / "usr" / "lib" / "postfix"


class ToolUnavailableError(RuntimeError):
    """A tool the benchmark needs could not be fetched or does not run; says why."""


def smtp_sink_environment() -> dict[str, str]:
    """The environment smtp-sink runs in: Postfix's own shared libraries are in .tools/."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        part for part in (str(LIBRARIES), env.get("LD_LIBRARY_PATH", "")) if part
    )
    return env


def ensure_smtp_sink(log: bool = True) -> Path:
    """The smtp-sink binary, downloaded (``apt-get download postfix``) and unpacked if needed."""
    if not SMTP_SINK.is_file():
        _fetch_postfix(log)
    _check_runs()
    return SMTP_SINK


def _fetch_postfix(log: bool) -> None:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise ToolUnavailableError(
                f"smtp-sink comes from Debian's postfix package, but {tool} is not on PATH"
            )
    TOOLS.mkdir(exist_ok=True)
    downloads = TOOLS / "downloads"
    downloads.mkdir(exist_ok=True)
    if log:
        print("==> fetching smtp-sink: apt-get download postfix", flush=True)
    if not _download(downloads):
        # A fresh machine has no package lists yet; that needs root.
        if log:
            print("==> apt-get update (no package lists yet)", flush=True)
        _run(["apt-get", "update", "-qq"], cwd=downloads, what="apt-get update")
        if not _download(downloads):
            _run(["apt-get", "download", "postfix"], cwd=downloads, what="apt-get download")
    packages = sorted(downloads.glob("postfix_*.deb"))
    if not packages:
        raise ToolUnavailableError(f"apt-get download postfix left no .deb in {downloads}")
    shutil.rmtree(POSTFIX, ignore_errors=True)
    _run(["dpkg", "-x", str(packages[-1]), str(POSTFIX)], cwd=TOOLS, what="dpkg -x")
    if not SMTP_SINK.is_file():
        raise ToolUnavailableError(f"{packages[-1].name} has no usr/sbin/smtp-sink")


def _download(directory: Path) -> bool:
    result = subprocess.run(
        ["apt-get", "download", "postfix"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and any(directory.glob("postfix_*.deb"))


def _run(command: list[str], *, cwd: Path, what: str) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        hint = " (it needs root)" if os.geteuid() != 0 else ""
        raise ToolUnavailableError(
            f"{what} failed with exit {result.returncode}{hint}: " + " | ".join(detail)
        )


def _check_runs() -> None:
    # Without arguments smtp-sink prints its usage and exits 1; a missing library fails earlier.
    result = subprocess.run(
        [str(SMTP_SINK)],
        env=smtp_sink_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if "usage" not in result.stderr:
        raise ToolUnavailableError(
            f"{SMTP_SINK} does not run here: {result.stderr.strip()[-500:]}"
            " (its shared libraries come from Debian: libdb5.3, libnsl2, libicu72)"
        )
