"""`render` with a whole request: locale, headers, attachments shown and written with --out."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from messaging_service.cli import main

PDF = b"%PDF-1.4 invoice"
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def request_file(tmp_path: Path, **fields: Any) -> Path:
    payload: dict[str, Any] = {
        "id": "r-1",
        "template": "welcome",
        "locale": "de-AT",
        "to": "ada@example.com",
        "data": {"name": "Ada"},
        "attachments": [
            {"filename": "Rechnung März.pdf", "content": base64.b64encode(PDF).decode()},
            {
                "filename": "logo.png",
                "content": base64.b64encode(PNG).decode(),
                "content_id": "logo",
            },
            {"filename": "terms.pdf", "url": "https://files.example.com/terms.pdf"},
        ],
        "headers": {"X-Campaign": "spring"},
        "list_unsubscribe": {"url": "https://shop.example.com/u/1"},
    }
    payload.update(fields)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(payload))
    return path


def test_render_file_shows_locale_headers_and_attachments(tmp_path: Path) -> None:
    result = invoke("render", "--file", str(request_file(tmp_path)))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Subject: Willkommen, Ada!\nTemplate: welcome (de)\n")
    assert "X-Campaign: spring" in result.output
    assert "List-Unsubscribe: <https://shop.example.com/u/1>" in result.output
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in result.output
    assert f"Rechnung März.pdf (application/pdf, {len(PDF)} bytes)" in result.output
    assert "logo.png (image/png, 8 bytes, inline as cid:logo)" in result.output
    assert "terms.pdf (application/pdf), fetched from https://files.example.com" in result.output


def test_render_file_out_writes_the_attachments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("render", "--file", str(request_file(tmp_path)), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "welcome" / "attachments" / "Rechnung März.pdf").read_bytes() == PDF
    assert (out / "welcome" / "attachments" / "logo.png").read_bytes() == PNG
    assert not (out / "welcome" / "attachments" / "terms.pdf").exists()
    assert "Willkommen" in (out / "welcome" / "subject.txt").read_text()


def test_render_with_locale_option() -> None:
    result = invoke(
        "render",
        "password_reset",
        "--locale",
        "de",
        "--data",
        json.dumps({"name": "Ada", "reset_url": "https://shop.example.com/r/1"}),
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Subject: Passwort zurücksetzen\n")


def test_render_refuses_a_bad_attachment_or_locale(tmp_path: Path) -> None:
    bad = request_file(tmp_path, attachments=[{"filename": "x.exe", "content": "TVo="}])
    result = invoke("render", "--file", str(bad))
    assert result.exit_code == 2
    assert ".exe files are blocked" in result.output
    assert invoke("render", "welcome", "--locale", "de_AT").exit_code == 2


def test_render_needs_a_template_or_a_file(tmp_path: Path) -> None:
    assert invoke("render").exit_code == 2
    assert invoke("render", "welcome", "--file", str(request_file(tmp_path))).exit_code == 2


def test_send_refuses_a_request_with_a_bad_attachment(tmp_path: Path) -> None:
    bad = request_file(tmp_path, attachments=[{"filename": "x.exe", "content": "TVo="}])
    result = invoke("send", "--file", str(bad))
    assert result.exit_code == 2
    assert "invalid request: attachment 'x.exe': .exe files are blocked" in result.output


def test_send_refuses_an_attachment_url_on_a_host_not_allowed(tmp_path: Path) -> None:
    result = invoke("send", "--file", str(request_file(tmp_path)))
    assert result.exit_code == 2
    assert "EMAIL_ATTACHMENT_URL_HOSTS is empty" in result.output
