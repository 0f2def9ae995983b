"""``messaging-service dev --once`` end to end, as a newcomer (and CI) runs it: a subprocess.

It starts its own embedded broker and mail catcher, whatever broker the other tests use.
"""

from __future__ import annotations

import email.policy
import os
import re
import subprocess
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from messaging_service.core.values import Outcome
from messaging_service.dev.samples import samples
from messaging_service.ops.preview import render_template

pytestmark = pytest.mark.integration

_PARSER = BytesParser(policy=email.policy.default)


def dev_once(cwd: Path, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "messaging_service", "dev", "--once", "--outbox", "tmp", *options],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def outbox(folder: Path) -> dict[str, EmailMessage]:
    messages = {}
    for path in sorted(folder.glob("*.eml")):
        message = _PARSER.parsebytes(path.read_bytes())
        assert isinstance(message, EmailMessage)
        messages[str(message["X-Email-Id"])] = message
    return messages


def test_dev_once_delivers_every_built_in_template_and_dead_letters_one(tmp_path: Path) -> None:
    result = dev_once(tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "done: 4 sent, 1 dead-lettered" in result.stdout
    assert (
        "dead letter sample-dead-letter: template_error - "
        "template 'password_reset' (text): 'reset_url' is undefined"
    ) in result.stdout
    assert "\r" not in result.stdout, "no redrawing when stdout is not a terminal"
    # A dead letter gets its own line, as a caught email does, not the service's log event.
    assert (
        "dead     sample-dead-letter: template_error - "
        "template 'password_reset' (text): 'reset_url' is undefined"
    ) in result.stdout
    assert "email_dead_lettered" not in result.stdout
    assert_status_never_trails_the_lines_above_it(result.stdout)
    expected = {
        sample.id: render_template(
            sample.request["template"], sample.request["data"], locale=sample.request.get("locale")
        ).subject
        for sample in samples()
        if sample.outcome is Outcome.SENT
    }
    caught = outbox(tmp_path / "tmp")
    assert {email_id: str(message["Subject"]) for email_id, message in caught.items()} == expected
    for email_id, message in caught.items():
        assert f"mail     to {message['To'].addresses[0].addr_spec}" in result.stdout, email_id
        assert message.get_body(("plain",)) is not None
        assert message.get_body(("html",)) is not None
    invoice = caught["sample-invoice-attached"]
    [attached] = list(invoice.iter_attachments())
    assert attached.get_filename() == "Rechnung-A-1002.pdf"
    related = next(p for p in invoice.walk() if p.get_content_type() == "multipart/related")
    html, logo = related.iter_parts()
    assert 'src="cid:logo"' in html.get_content()
    assert logo["Content-ID"] == "<logo>"


def test_dev_once_exits_1_with_the_reason_when_a_sample_does_not_reach_its_outcome(
    tmp_path: Path,
) -> None:
    """A template override the welcome sample cannot satisfy: it is dead-lettered, not sent."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "welcome.subject.txt").write_text("Hello {{ nickname }}")
    (templates / "welcome.txt").write_text("Hi")

    result = dev_once(tmp_path, EMAIL_TEMPLATES_DIR=str(templates))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "unexpected outcome: sample-welcome was not delivered" in result.stderr
    assert sorted(outbox(tmp_path / "tmp")) == [
        "sample-invoice-attached",
        "sample-order-confirmation",
        "sample-password-reset",
    ]


def assert_status_never_trails_the_lines_above_it(stdout: str) -> None:
    mails = dead = statuses = 0
    for line in stdout.splitlines():
        mails += line.startswith("mail     ")
        dead += line.startswith("dead     ")
        status = re.fullmatch(r"sent (\d+) \| dead-lettered (\d+) \| pending (\d+)", line)
        if status:
            statuses += 1
            assert int(status[1]) >= mails, (line, stdout)
            assert int(status[2]) >= dead, (line, stdout)
    # Each outcome line is followed by a status that includes it.
    assert statuses >= mails + dead, stdout


def test_dev_once_exits_1_when_the_samples_are_not_done_within_the_timeout(
    tmp_path: Path,
) -> None:
    """A microsecond from publishing: no look after the deadline may count as in time."""
    result = dev_once(tmp_path, "--timeout", "0.000001")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "the samples did not reach their outcome within 1e-06 s" in result.stderr
