"""Dev-mode samples: one per built-in template, each valid and rendering, plus a dead letter."""

from __future__ import annotations

import pytest

from messaging_service.core.contract import parse_request
from messaging_service.core.templates import TemplateRenderer
from messaging_service.core.values import Outcome
from messaging_service.dev.samples import Sample, samples
from messaging_service.errors import TemplateError
from messaging_service.ops.preview import render_template
from messaging_service.ops.send import encode_request


def test_every_built_in_template_has_a_sample_that_is_sent() -> None:
    sent = {s.request["template"] for s in samples() if s.outcome is Outcome.SENT}

    assert sent == set(TemplateRenderer().names)


def test_samples_are_valid_requests_with_distinct_ids() -> None:
    ids = [parse_request(encode_request(s.request)).id for s in samples()]

    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "sample", [s for s in samples() if s.outcome is Outcome.SENT], ids=lambda s: s.id
)
def test_samples_to_be_sent_render(sample: Sample) -> None:
    request = sample.request
    rendered = render_template(request["template"], request["data"])

    assert rendered.subject
    assert rendered.text is not None
    assert rendered.html is not None


def test_exactly_one_sample_is_dead_lettered_because_its_template_fails() -> None:
    [dead] = [s for s in samples() if s.outcome is Outcome.DEAD_LETTERED]

    assert dead.reason is not None
    assert dead.reason.value == "template_error"
    with pytest.raises(TemplateError, match="reset_url"):
        render_template(dead.request["template"], dead.request["data"])
