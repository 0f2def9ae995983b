"""Fuzzing: generated payloads through decoding, validation, rendering and MIME, via the handler.

Every payload must end as ``Finished(SENT)`` or a dead letter with a reason, and no exception
may escape ``RequestHandler.process`` (the pipeline would count it in unexpected_errors).
A sent message must carry only the headers the service writes: hostile CR/LF in the subject,
names or addresses must never add one. ``FUZZ_EXAMPLES`` raises the example count per test
(default 400: about 2,400 generated payloads in six tests, some 25 s).
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import json
import os
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from messaging_service.core.contract import RequestLimits
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import Outcome
from messaging_service.service.delivery import Delivery, Finished
from messaging_service.service.health import Health
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeSender, record
from support.handler import make_handler

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, database=None, deadline=None)

RENDERER = TemplateRenderer(render_timeout=0.5)
HEADERS = {
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "x-email-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
_PARSER = BytesParser(policy=email.policy.default)

# hostile text: line breaks, NULs, bidi and zero-width characters, template syntax, long runs
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "\r\nBcc: victim@example.org",
            "x\nSubject: injected",
            "a\x00b",
            "\u202eevil\u202c",
            "\u200b",
            "{{ 7 * 7 }}",
            "{% for x in range(10**9) %}{% endfor %}",
            "{{ ''.__class__.__mro__ }}",
            "=?utf-8?q?=0D=0ABcc:_x@example.org?=",
            "ünïcödé 表 😀",
            "x" * 1000,
        ]
    ),
)
ADDRESS = st.one_of(
    st.sampled_from(
        [
            "bob@example.com",
            "Bob <bob@example.com>",
            '"Evil\r\nBcc: x@example.org" <bob@example.com>',
            "bob@example.com\r\nBcc: x@example.org",
            "bob@localhost",
            "bob@[127.0.0.1]",
            "böb@exämple.com",
            "a@b",
            "@example.com",
            "x" * 300 + "@example.com",
        ]
    ),
    st.emails().map(str),
    HOSTILE,
)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    HOSTILE,
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
DATA = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(HOSTILE, JSON),
        "reset_url": st.one_of(HOSTILE, JSON),
        "order_id": st.one_of(HOSTILE, JSON),
        "total": st.one_of(SCALAR, st.sampled_from(["1e999999", "-0", "NaN", "12.5"])),
        "items": st.one_of(
            JSON,
            st.lists(
                st.fixed_dictionaries({"name": HOSTILE, "quantity": SCALAR, "price": SCALAR}),
                max_size=4,
            ),
        ),
        "extra": JSON,
    },
)
RECIPIENTS = st.one_of(ADDRESS, st.lists(ADDRESS, max_size=4), JSON)
REQUEST = st.fixed_dictionaries(
    {"id": st.one_of(st.just("fz-1"), HOSTILE, JSON)},
    optional={
        "template": st.one_of(
            st.sampled_from(["welcome", "password_reset", "order_confirmation", "nope", "../x"]),
            JSON,
        ),
        "to": RECIPIENTS,
        "cc": RECIPIENTS,
        "bcc": RECIPIENTS,
        "reply_to": st.one_of(ADDRESS, JSON),
        "subject": st.one_of(HOSTILE, JSON),
        "text": st.one_of(HOSTILE, JSON),
        "html": st.one_of(HOSTILE, JSON),
        "data": st.one_of(DATA, JSON),
        "unknown": JSON,
    },
)


def _deep(depth: int, kind: str) -> bytes:
    inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    return (
        '{"id": "deep", "to": "bob@example.com", "template": "welcome", "data": {"name": '
        + inner
        + "}}"
    ).encode()


class Run:
    """One handler and event loop for all examples of a test."""

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        self.loop = asyncio.new_event_loop()
        self.registry = CollectorRegistry()
        self.sender = FakeSender()
        self.dead_letters = FakeDeadLetters()
        self.handler = make_handler(
            renderer=RENDERER,
            builder=MessageBuilder("Shop <shop@example.com>"),
            sender=self.sender,
            dead_letters=self.dead_letters,
            policy=RetryPolicy(max_retries=0, delays=(1,)),
            metrics=Metrics(self.registry),
            health=Health(),
            limits=RequestLimits(max_record_bytes=20_000, max_data_bytes=4_000, max_data_depth=6),
            allowed_domains=allowed,
        )

    def check(self, value: bytes | None) -> None:
        sent_before = len(self.sender.sent)
        letters_before = len(self.dead_letters.published)
        step = self.loop.run_until_complete(self.handler.process(Delivery(record(value))))
        assert isinstance(step, Finished), step
        if step.outcome is Outcome.SENT:
            [email] = self.sender.sent[sent_before:]
            headers = {name.lower() for name in _PARSER.parsebytes(email.message)}
            assert headers <= HEADERS, headers - HEADERS
            assert all("\r" not in r and "\n" not in r for r in email.recipients)
        else:
            [letter] = self.dead_letters.published[letters_before:]
            assert letter.reason is not None
            assert str(letter.error)
        assert self.registry.get_sample_value("email_unexpected_errors_total") == 0

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def run() -> Iterator[Run]:
    runner = Run()
    yield runner
    runner.close()


def _fuzz(run: Run, strategy: st.SearchStrategy[Any], encode: Callable[[Any], bytes]) -> None:
    @FUZZ
    @given(strategy)
    def one(value: Any) -> None:
        run.check(encode(value))

    one()


def test_random_bytes(run: Run) -> None:
    _fuzz(run, st.one_of(st.none(), st.binary(max_size=300)), lambda value: value)


def test_near_valid_requests(run: Run) -> None:
    _fuzz(run, REQUEST, lambda value: json.dumps(value).encode())


def test_near_valid_requests_with_every_field_present(run: Run) -> None:
    full = REQUEST.map(
        lambda r: {"template": "welcome", "to": "bob@example.com", "data": {"name": "x"}, **r}
    )
    _fuzz(run, full, lambda value: json.dumps(value).encode())
    assert run.sender.sent, "no generated request was ever sent: the strategy is too hostile"


def test_any_json_document(run: Run) -> None:
    _fuzz(run, JSON, lambda value: json.dumps(value).encode())


def test_mangled_valid_request(run: Run) -> None:
    """A valid request with bytes flipped, cut or inserted somewhere."""
    valid = json.dumps(
        {
            "id": "m-1",
            "template": "order_confirmation",
            "to": "bob@example.com",
            "data": {"name": "Bob", "order_id": "A1", "items": [], "total": "1.00"},
        }
    ).encode()
    edits = st.tuples(
        st.integers(min_value=0, max_value=len(valid)),
        st.integers(min_value=0, max_value=8),
        st.binary(max_size=8),
    )

    def mangle(edit: tuple[int, int, bytes]) -> bytes:
        at, cut, insert = edit
        return valid[:at] + insert + valid[at + cut :]

    _fuzz(run, edits, mangle)


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [7, 100, 1000, 9000])
def test_deep_nesting_is_a_dead_letter(run: Run, kind: str, depth: int) -> None:
    run.check(_deep(depth, kind))
    assert run.dead_letters.published


def test_allowlist_never_lets_another_domain_through() -> None:
    runner = Run(allowed=("example.com",))
    try:
        _fuzz(runner, REQUEST, lambda value: json.dumps(value).encode())
        for sent in runner.sender.sent:
            assert all(r.rpartition("@")[2].endswith("example.com") for r in sent.recipients)
    finally:
        runner.close()


B64 = st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), HOSTILE)
ATTACHMENT = st.fixed_dictionaries(
    {},
    optional={
        "filename": st.one_of(
            st.sampled_from(["a.pdf", "x.exe", "..", "a/b.pdf", "Rechnung März.pdf", "logo.png"]),
            HOSTILE,
            JSON,
        ),
        "content_type": st.one_of(st.sampled_from(["application/pdf", "image/png"]), HOSTILE),
        "content": st.one_of(B64, JSON),
        "url": st.one_of(
            st.sampled_from(["https://files.example.com/a.pdf", "http://x.example.com/a"]),
            HOSTILE,
        ),
        "content_id": st.one_of(st.sampled_from(["logo", "<x>", "a b"]), HOSTILE),
        "extra": JSON,
    },
)
HEADER_NAME = st.one_of(
    st.sampled_from(
        ["X-Campaign", "List-Id", "References", "From", "Bcc", "X-Email-Id", "x-a", "X A"]
    ),
    HOSTILE,
)
CONTENT = st.fixed_dictionaries(
    {},
    optional={
        "attachments": st.one_of(st.lists(ATTACHMENT, max_size=3), JSON),
        "headers": st.one_of(st.dictionaries(HEADER_NAME, HOSTILE, max_size=4), JSON),
        "list_unsubscribe": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "url": st.one_of(st.just("https://shop.example.com/u/1"), HOSTILE),
                    "mailto": st.one_of(ADDRESS, JSON),
                },
            ),
            JSON,
        ),
        "locale": st.one_of(st.sampled_from(["de", "de-AT", "zz-ZZ", "de_AT"]), HOSTILE),
        "tags": st.one_of(st.lists(HOSTILE, max_size=12), JSON),
        "metadata": st.one_of(st.dictionaries(st.text(max_size=8), HOSTILE, max_size=4), JSON),
    },
)
OWNED = {"bcc", "received", "return-path", "dkim-signature"}


def test_contract_additions_never_escape_or_inject_a_header(run: Run) -> None:
    """Attachments, headers, unsubscribe, locale, tags, metadata: an outcome, no injection."""
    base = {"id": "c-1", "template": "welcome", "to": "bob@example.com", "data": {"name": "x"}}

    @FUZZ
    @given(CONTENT.map(lambda extra: {**base, **extra}))
    def one(value: dict[str, Any]) -> None:
        sent_before = len(run.sender.sent)
        letters_before = len(run.dead_letters.published)
        step = run.loop.run_until_complete(
            run.handler.process(Delivery(record(json.dumps(value).encode())))
        )
        assert isinstance(step, Finished), step
        if step.outcome is Outcome.SENT:
            [sent] = run.sender.sent[sent_before:]
            message = _PARSER.parsebytes(sent.message)
            names = [name.lower() for name in message]
            assert not set(names) & OWNED
            assert len(names) == len(set(names)), names
            for part in message.walk():
                assert not part.defects, part.defects
        else:
            [letter] = run.dead_letters.published[letters_before:]
            assert letter.reason is not None
        assert run.registry.get_sample_value("email_unexpected_errors_total") == 0

    one()
    assert run.sender.sent, "no generated request was ever sent: the strategy is too hostile"
