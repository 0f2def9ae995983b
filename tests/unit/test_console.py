"""Dev-mode console: a status line redrawn in place on a TTY, plain lines elsewhere."""

from __future__ import annotations

import io
import logging

from messaging_service.dev.console import Console


def test_off_a_tty_the_status_is_a_plain_line_printed_only_when_it_changes() -> None:
    out = io.StringIO()
    console = Console(out, live=False)

    console.status("sent 0")
    console.status("sent 0")
    console.line("mail to ada@example.com")
    console.status("sent 1")
    console.end_status()

    assert out.getvalue() == "sent 0\nmail to ada@example.com\nsent 1\n"
    assert "\r" not in out.getvalue()


def test_on_a_tty_lines_go_above_the_status_which_is_redrawn() -> None:
    out = io.StringIO()
    console = Console(out, live=True)

    console.status("sent 0")
    console.line("mail to ada@example.com")
    console.status("sent 1")
    console.end_status()
    console.line("done")

    assert out.getvalue() == (
        "\r\x1b[2Ksent 0\r\x1b[2Kmail to ada@example.com\nsent 0\r\x1b[2Ksent 1\ndone\n"
    )


def test_the_console_follows_the_stream_being_a_tty_by_default() -> None:
    assert not Console(io.StringIO()).live


def test_the_log_stream_turns_complete_lines_into_console_lines() -> None:
    out = io.StringIO()
    console = Console(out, live=True)
    console.status("pending 2")
    stream = console.stream()

    stream.write("first part, ")
    stream.write("end\nsecond\nthird ")
    handler = logging.StreamHandler(stream)
    handler.handle(logging.makeLogRecord({"msg": "from logging"}))

    assert out.getvalue() == (
        "\r\x1b[2Kpending 2"
        "\r\x1b[2Kfirst part, end\npending 2"
        "\r\x1b[2Ksecond\npending 2"
        "\r\x1b[2Kthird from logging\npending 2"
    )
    assert stream.isatty()
