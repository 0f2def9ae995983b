"""The log context and the service's batched log stream."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import threading

import structlog

from messaging_service.config import LogFormat, LogLevel, LogSettings
from messaging_service.telemetry import logcontext
from messaging_service.telemetry.logging import (
    FLUSH_DELAY,
    LoopBatchedStream,
    configure_logging,
)


def test_bound_fields_are_restored_after_the_block() -> None:
    def body() -> None:
        logcontext.bind(child=1)
        with logcontext.bound(email_id="a", worker="w-0"):
            assert logcontext.current() == {"child": 1, "email_id": "a", "worker": "w-0"}
            logcontext.bind(email_id="b")  # the handler learns the id after parsing
            assert logcontext.current()["email_id"] == "b"
        assert logcontext.current() == {"child": 1}

    contextvars.Context().run(body)  # a context of its own: nothing leaks into other tests
    assert logcontext.current() == {}


def test_an_event_keeps_its_own_value_over_a_bound_one() -> None:
    with logcontext.bound(email_id="bound", topic="t"):
        event = logcontext.merge_fields(None, "info", {"event": "x", "email_id": "own"})
    assert event == {"event": "x", "email_id": "own", "topic": "t"}


async def test_tasks_see_what_was_bound_when_they_started() -> None:
    with logcontext.bound(email_id="outer"):
        task = asyncio.create_task(asyncio.sleep(0, result=None))
        seen = asyncio.create_task(_current())
    await task
    assert await seen == {"email_id": "outer"}


async def _current() -> dict[str, object]:
    return dict(logcontext.current())


async def test_lines_logged_close_together_are_written_together() -> None:
    target = _CountingStream()
    stream = LoopBatchedStream(target)
    for n in range(3):
        stream.write(f"line {n}\n")
        stream.flush()
    await asyncio.sleep(0)
    assert target.getvalue() == ""  # kept for a moment
    await asyncio.sleep(FLUSH_DELAY * 3)
    assert target.getvalue() == "line 0\nline 1\nline 2\n"
    assert target.writes == 1


def test_without_a_running_loop_lines_are_written_at_once() -> None:
    target = _CountingStream()
    stream = LoopBatchedStream(target)
    stream.write("now\n")
    stream.flush()
    assert target.getvalue() == "now\n"


def test_a_flush_asked_on_a_loop_that_stopped_is_asked_again_on_the_next() -> None:
    target = _CountingStream()
    stream = LoopBatchedStream(target)

    async def log(text: str, *, wait: float) -> None:
        stream.write(text)
        stream.flush()
        await asyncio.sleep(wait)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log("first\n", wait=0))  # its flush is due on this loop
    loop.close()  # ... which never runs it
    asyncio.run(log("second\n", wait=FLUSH_DELAY * 3))
    assert target.getvalue() == "first\nsecond\n"


def test_what_is_kept_is_written_when_asked_at_the_end() -> None:
    target = _CountingStream()
    stream = LoopBatchedStream(target)

    async def log() -> None:
        stream.write("last words\n")
        stream.flush()

    asyncio.run(log())
    stream.flush_now()  # what the command does once its loop has ended (and atexit)
    assert target.getvalue() == "last words\n"


def test_other_threads_write_at_once() -> None:
    target = _CountingStream()
    stream = LoopBatchedStream(target)

    def log() -> None:
        stream.write("from a thread\n")
        stream.flush()

    thread = threading.Thread(target=log)
    thread.start()
    thread.join()
    assert target.getvalue() == "from a thread\n"


async def test_the_service_logs_json_with_the_bound_fields() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(
        LogSettings(level=LogLevel.INFO, format=LogFormat.JSON), out, batch_writes=True
    )
    try:
        with logcontext.bound(email_id="e-1"):
            structlog.get_logger("t").info("email_sent", attempt=1, odd={1, 2})
        await asyncio.sleep(FLUSH_DELAY * 3)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    event = json.loads(out.getvalue())
    assert event["event"] == "email_sent"
    assert event["email_id"] == "e-1"
    assert event["attempt"] == 1
    assert event["level"] == "info"
    assert event["odd"] == "{1, 2}"  # what JSON has no type for is written as its repr
    assert event["timestamp"].endswith("Z")


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)
