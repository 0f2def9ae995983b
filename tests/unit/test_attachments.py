"""Attachment contents: base64, sizes, blocked types and URL hosts (attachment_error)."""

from __future__ import annotations

import base64

import pytest

from messaging_service.core.attachments import AttachmentPart, RemoteAttachment, guess_type, resolve
from messaging_service.core.request_extras import Attachment
from messaging_service.errors import AttachmentError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_content_is_decoded_and_type_guessed_from_the_name() -> None:
    [part] = resolve([Attachment(filename="invoice.pdf", content=b64(b"%PDF"))])
    assert part == AttachmentPart("invoice.pdf", "application/pdf", b"%PDF")


def test_given_content_type_wins_and_unknown_names_are_octet_stream() -> None:
    parts = resolve(
        [
            Attachment(filename="data", content=b64(b"x")),
            Attachment(filename="a.bin", content=b64(b"y"), content_type="Text/CSV"),
        ]
    )
    assert [p.content_type for p in parts] == ["application/octet-stream", "text/csv"]
    assert guess_type("archive.tar.gz") == "application/octet-stream"


def test_base64_with_line_breaks_is_accepted() -> None:
    text = base64.encodebytes(b"z" * 200).decode()
    [part] = resolve([Attachment(filename="a.txt", content=text)])
    assert isinstance(part, AttachmentPart)
    assert part.data == b"z" * 200


@pytest.mark.parametrize("content", ["not base64!", "QQ", "QQ==QQ==", "äöü"])
def test_bad_base64_is_an_attachment_error(content: str) -> None:
    with pytest.raises(AttachmentError, match="not valid base64"):
        resolve([Attachment(filename="a.pdf", content=content)])


def test_all_attachments_together_are_capped() -> None:
    parts = [Attachment(filename=f"{i}.bin", content=b64(b"x" * 600)) for i in range(2)]
    resolve(parts, max_bytes=1200)
    with pytest.raises(AttachmentError, match="EMAIL_MAX_ATTACHMENT_BYTES"):
        resolve(parts, max_bytes=1000)


@pytest.mark.parametrize("name", ["setup.exe", "run.BAT", "x.js", "a.vbs", "s.scr", "a.b.cmd"])
def test_blocked_file_types(name: str) -> None:
    with pytest.raises(AttachmentError, match="blocked"):
        resolve([Attachment(filename=name, content=b64(b"MZ"))])


def test_blocked_content_type_under_a_harmless_name() -> None:
    with pytest.raises(AttachmentError, match="blocked"):
        resolve(
            [
                Attachment(
                    filename="a.pdf", content=b64(b"MZ"), content_type="application/x-msdownload"
                )
            ]
        )


def test_url_attachment_is_left_to_fetch_when_its_host_is_allowed() -> None:
    [part] = resolve(
        [Attachment(filename="terms.pdf", url="https://files.example.com/terms.pdf")],
        url_hosts=("files.example.com",),
    )
    assert part == RemoteAttachment(
        "terms.pdf", "application/pdf", "https://files.example.com/terms.pdf"
    )


@pytest.mark.parametrize(
    ("url", "hosts", "message"),
    [
        ("https://files.example.com/a.pdf", (), "EMAIL_ATTACHMENT_URL_HOSTS is empty"),
        ("https://evil.example.com/a.pdf", ("files.example.com",), "not in"),
        ("https://files.example.com.evil.com/a", ("files.example.com",), "not in"),
        ("http://files.example.com/a.pdf", ("files.example.com",), "only https"),
        ("https://u:p@files.example.com/a.pdf", ("files.example.com",), "credentials"),
        ("https://files.example.com:x/a.pdf", ("files.example.com",), "not a valid URL"),
    ],
)
def test_url_refusals(url: str, hosts: tuple[str, ...], message: str) -> None:
    with pytest.raises(AttachmentError, match=message):
        resolve([Attachment(filename="a.pdf", url=url)], url_hosts=hosts)


def test_a_content_id_used_twice_is_refused() -> None:
    twice = [Attachment(filename=f"{i}.png", content=b64(b"x"), content_id="logo") for i in "ab"]
    with pytest.raises(AttachmentError, match="used twice"):
        resolve(twice)
