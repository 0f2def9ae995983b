"""Limits on untrusted input and the recipient-domain allowlist, each a clear dead letter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from messaging_service.config import ConfigError, load_settings
from messaging_service.core.contract import (
    RequestLimits,
    check_recipient_domains,
    domain_allowed,
    parse_request,
)
from messaging_service.core.mime import MessageBuilder
from messaging_service.core.retry import RetryPolicy
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import FailureReason, Outcome
from messaging_service.errors import InvalidPayloadError, RecipientNotAllowedError
from messaging_service.service.delivery import Delivery, Finished
from messaging_service.service.handler import RequestHandler
from messaging_service.service.health import Health
from messaging_service.telemetry.metrics import Metrics
from support.fakes import FakeDeadLetters, FakeSender, record
from support.handler import make_handler

LIMITS = RequestLimits(
    max_record_bytes=2000, max_recipients=3, max_data_depth=3, max_data_bytes=200
)


def payload(**fields: Any) -> bytes:
    request: dict[str, Any] = {"id": "lim-1", "to": "bob@example.com", "subject": "Hi", "text": "x"}
    request.update(fields)
    return json.dumps(request).encode()


def nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        data = {"child": data}
    return data


# parse_request: each limit is an InvalidPayloadError that names its setting


def test_a_record_over_the_size_limit_is_refused_before_parsing() -> None:
    value = payload(text="x" * 3000)
    with pytest.raises(InvalidPayloadError, match=r"EMAIL_MAX_RECORD_BYTES") as caught:
        parse_request(value, LIMITS)
    assert f"record is {len(value)} bytes, more than 2000" in str(caught.value)
    # Not even JSON: the size is checked first.
    with pytest.raises(InvalidPayloadError, match="EMAIL_MAX_RECORD_BYTES"):
        parse_request(b"\xff" * 2001, LIMITS)


@pytest.mark.parametrize(
    "recipients",
    [
        {"to": [f"u{i}@example.com" for i in range(4)]},
        {"to": "a@example.com", "cc": ["b@example.com", "c@example.com"], "bcc": "d@example.com"},
        # Not even valid addresses: counted before any is parsed.
        {"to": ["not an address"] * 4},
    ],
)
def test_more_recipients_than_the_limit_are_refused(recipients: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError, match=r"at most 3 recipients .*EMAIL_MAX_RECIPIENTS"):
        parse_request(payload(**recipients), LIMITS)


def test_recipients_at_the_limit_pass() -> None:
    request = parse_request(
        payload(to="a@example.com", cc="b@example.com", bcc="c@example.com"), LIMITS
    )
    assert len(request.envelope_recipients) == 3


def test_data_nested_deeper_than_the_limit_is_refused() -> None:
    assert parse_request(payload(data=nested(3)), LIMITS).data == nested(3)
    with pytest.raises(InvalidPayloadError, match=r"data: .*deeper than 3 levels .*DEPTH"):
        parse_request(payload(data=nested(4)), LIMITS)
    # Lists count as levels too.
    with pytest.raises(InvalidPayloadError, match="EMAIL_MAX_DATA_DEPTH"):
        parse_request(payload(data={"a": [[{"b": 1}]]}), LIMITS)


def test_data_larger_than_the_limit_is_refused() -> None:
    parse_request(payload(data={"s": "x" * 150}), LIMITS)
    with pytest.raises(InvalidPayloadError, match=r"data: .*more than 200 .*EMAIL_MAX_DATA_BYTES"):
        parse_request(payload(data={"s": "x" * 250}), LIMITS)


def test_very_deep_json_is_an_invalid_payload_not_a_crash() -> None:
    deep = b'{"id": "d", "to": "a@example.com", "data": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    with pytest.raises(InvalidPayloadError):
        parse_request(deep)


# the allowlist


@pytest.mark.parametrize(
    ("domain", "allowed"),
    [
        ("example.com", True),
        ("EU.Example.com", True),
        ("a.b.example.com", True),
        ("badexample.com", False),
        ("example.com.evil.net", False),
        ("example.org", False),
        ("corp.test", True),
    ],
)
def test_domain_matching_admits_the_domain_and_its_subdomains(domain: str, allowed: bool) -> None:
    assert domain_allowed(domain, ("example.com", "corp.test")) is allowed


@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
def test_every_recipient_field_is_checked(field: str) -> None:
    fields = {"to": "ok@example.com", field: ["ok2@sub.example.com", "real@customer.net"]}
    request = parse_request(payload(**fields))
    with pytest.raises(
        RecipientNotAllowedError, match=r"EMAIL_ALLOWED_DOMAINS: real@customer\.net"
    ):
        check_recipient_domains(request, ("example.com",))


def test_no_allowlist_allows_everyone() -> None:
    check_recipient_domains(parse_request(payload(to="any@customer.net")), ())


def test_allowed_domains_setting_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_ALLOWED_DOMAINS", " Example.COM , @staging.test., bücher.example ,")
    settings = load_settings(env_file=None)
    assert settings.email.allowed_domains == (
        "example.com",
        "staging.test",
        "xn--bcher-kva.example",
    )
    monkeypatch.setenv("EMAIL_ALLOWED_DOMAINS", "")
    assert load_settings(env_file=None).email.allowed_domains == ()
    monkeypatch.setenv("EMAIL_ALLOWED_DOMAINS", "a b.com")
    with pytest.raises(ConfigError, match="EMAIL_ALLOWED_DOMAINS"):
        load_settings(env_file=None)


def test_an_internationalised_domain_matches_its_ascii_form() -> None:
    request = parse_request(payload(to="leser@bücher.example"))
    check_recipient_domains(request, ("xn--bcher-kva.example",))


# the render limits


def _renderer(tmp_path: Path, body: str, timeout: float = 1.0) -> TemplateRenderer:
    (tmp_path / "hostile.subject.txt").write_text("Hello")
    (tmp_path / "hostile.txt").write_text(body)
    return TemplateRenderer(tmp_path, render_timeout=timeout)


def _render(renderer: TemplateRenderer, data: dict[str, Any]) -> None:
    renderer.render(parse_request(payload(template="hostile", subject=None, text=None, data=data)))


def test_a_render_that_outlives_its_deadline_is_stopped(tmp_path: Path) -> None:
    """Nested loops over hostile data would run for hours; the deadline ends them."""
    renderer = _renderer(
        tmp_path,
        "{% for a in items %}{% for b in items %}{% for c in items %}{{ a }}{% endfor %}"
        "{% endfor %}{% endfor %}",
        timeout=0.05,
    )
    with pytest.raises(InvalidPayloadError, match=r"longer than EMAIL_RENDER_TIMEOUT \(0.05 s\)"):
        _render(renderer, {"items": list(range(5000))})
    # The same template with ordinary data renders, and the deadline does not outlive a render.
    _render(renderer, {"items": [1, 2]})


@pytest.mark.parametrize(
    ("body", "data", "message"),
    [
        ("{{ '=' * n }}", {"n": 10**12}, "'\\*' would build"),
        ("{{ n * '=' }}", {"n": 10**12}, "'\\*' would build"),
        ("{{ items * n }}", {"items": [1, 2], "n": 10**9}, "'\\*' would build"),
        ("{{ 10 ** n }}", {"n": 10**9}, "'\\*\\*' would build"),
        ("{% set big = 10 ** n %}{{ big * big }}", {"n": 20000}, "'\\*' would build a number"),
    ],
)
def test_data_cannot_make_an_operator_build_something_huge(
    tmp_path: Path, body: str, data: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidPayloadError, match=message):
        _render(_renderer(tmp_path, body), data)


def test_ordinary_arithmetic_still_works(tmp_path: Path) -> None:
    (tmp_path / "calc.subject.txt").write_text("{{ '-' * 3 }} {{ 2 ** 10 }} {{ n * 2 }}")
    (tmp_path / "calc.txt").write_text("ok")
    renderer = TemplateRenderer(tmp_path)
    rendered = renderer.render(
        parse_request(payload(template="calc", subject=None, text=None, data={"n": 21}))
    )
    assert rendered.subject == "--- 1024 42"


# through the handler: dead letters with the reason and a message naming the limit


def harness(**options: Any) -> tuple[RequestHandler, FakeDeadLetters, CollectorRegistry]:
    dead_letters = FakeDeadLetters()
    registry = CollectorRegistry()
    options.setdefault("renderer", TemplateRenderer())
    handler = make_handler(
        builder=MessageBuilder("shop@example.com"),
        sender=FakeSender(),
        dead_letters=dead_letters,
        policy=RetryPolicy(max_retries=3, delays=(1, 5, 10)),
        metrics=Metrics(registry),
        health=Health(),
        **options,
    )
    return handler, dead_letters, registry


async def test_a_refused_recipient_domain_is_dead_lettered_with_its_reason() -> None:
    handler, dead_letters, registry = harness(allowed_domains=("example.com",))
    step = await handler.process(Delivery(record(payload(cc="someone@customer.net"))))
    assert step == Finished(Outcome.DEAD_LETTERED)
    [letter] = dead_letters.published
    assert letter.reason is FailureReason.RECIPIENT_NOT_ALLOWED
    assert letter.email_id == "lim-1"
    assert "someone@customer.net" in str(letter.error)
    labels = {"reason": "recipient_not_allowed"}
    assert registry.get_sample_value("email_dead_letters_total", labels) == 1


async def test_an_oversized_record_is_dead_lettered_as_invalid_payload() -> None:
    handler, dead_letters, _ = harness(limits=RequestLimits(max_record_bytes=100))
    step = await handler.process(Delivery(record(payload(text="x" * 200))))
    assert step == Finished(Outcome.DEAD_LETTERED)
    [letter] = dead_letters.published
    assert letter.reason is FailureReason.INVALID_PAYLOAD
    assert "EMAIL_MAX_RECORD_BYTES" in str(letter.error)
    assert letter.email_id is None  # an oversized record is not parsed to find its id


async def test_a_render_timeout_is_dead_lettered_as_invalid_payload(tmp_path: Path) -> None:
    renderer = _renderer(
        tmp_path,
        "{% for a in s %}{% for b in s %}{{ b }}{% endfor %}{% endfor %}",
        timeout=0.02,
    )
    handler, dead_letters, _ = harness(renderer=renderer)
    request = payload(template="hostile", subject=None, text=None, data={"s": "x" * 40_000})
    assert await handler.process(Delivery(record(request))) == Finished(Outcome.DEAD_LETTERED)
    [letter] = dead_letters.published
    assert letter.reason is FailureReason.INVALID_PAYLOAD
    assert "EMAIL_RENDER_TIMEOUT" in str(letter.error)
