"""Terminal output for dev mode: permanent lines, plus one status line redrawn in place on a TTY.

Off a TTY (a CI log, a pipe) nothing is redrawn: the status is printed as a plain line each
time it changes.
"""

from __future__ import annotations

import io
import threading
from typing import TextIO, cast

_CLEAR_LINE = "\r\x1b[2K"


class Console:
    """Owns one output stream; everything written to it goes through here."""

    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self._out = stream
        self.live = stream.isatty() if live is None else live
        self._status = ""
        # Library loggers may write from other threads; lines must never interleave.
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print a permanent line (above the status line, which is then redrawn)."""
        with self._lock:
            if self.live and self._status:
                self._out.write(_CLEAR_LINE + text + "\n" + self._status)
            else:
                self._out.write(text + "\n")
            self._out.flush()

    def status(self, text: str) -> None:
        """Show the current status; unchanged text is not written again."""
        with self._lock:
            if text == self._status:
                return
            self._status = text
            self._out.write(_CLEAR_LINE + text if self.live else text + "\n")
            self._out.flush()

    def end_status(self) -> None:
        """Leave the last status where it is and continue below it."""
        with self._lock:
            if self.live and self._status:
                self._out.write("\n")
                self._out.flush()
            self._status = ""

    def stream(self) -> TextIO:
        """A text stream for loggers: each complete line it receives becomes ``line()``."""
        # io.TextIOBase provides the rest of the file interface loggers may touch.
        return cast(TextIO, _LineStream(self))


class _LineStream(io.TextIOBase):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        self._pending = ""

    def write(self, text: str) -> int:
        *complete, self._pending = (self._pending + text).split("\n")
        for line in complete:
            self._console.line(line)
        return len(text)

    def isatty(self) -> bool:
        return self._console.live
