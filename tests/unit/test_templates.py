"""Template rendering: built-ins, escaping, strictness, the sandbox and overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from messaging_service.core.contract import EmailRequest
from messaging_service.core.templates import TemplateRenderer, money
from messaging_service.errors import TemplateError

RENDERER = TemplateRenderer()

ORDER_DATA: dict[str, Any] = {
    "name": "Bob",
    "order_id": "A-1001",
    "items": [
        {"name": "Blue widget", "quantity": 2, "price": 12.5},
        {"name": "Gadget", "quantity": 1, "price": "1234.5"},
    ],
    "total": 1259.5,
}


def request(template: str | None = "welcome", **fields: Any) -> EmailRequest:
    payload: dict[str, Any] = {"id": "req-1", "to": "bob@example.com", "template": template}
    payload.update(fields)
    return EmailRequest.model_validate(payload)


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (directory / name).write_text(content, encoding="utf-8")
    return directory


def test_builtin_names() -> None:
    assert RENDERER.names == frozenset({"welcome", "password_reset", "order_confirmation"})


def test_welcome_renders_every_part() -> None:
    rendered = RENDERER.render(request(data={"name": "Alice"}))
    assert rendered.subject == "Welcome, Alice!"
    assert rendered.text is not None
    assert rendered.html is not None
    assert "Hi Alice," in rendered.text
    assert "Welcome, Alice!" in rendered.html
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")


def test_password_reset_renders_the_link_in_both_bodies() -> None:
    url = "https://shop.example/reset?token=abc&user=7"
    rendered = RENDERER.render(request("password_reset", data={"name": "Alice", "reset_url": url}))
    assert rendered.subject == "Reset your password"
    assert rendered.text is not None
    assert rendered.html is not None
    assert url in rendered.text
    assert "Hi Alice," in rendered.text
    assert 'href="https://shop.example/reset?token=abc&amp;user=7"' in rendered.html


def test_order_confirmation_lists_items_and_formats_prices() -> None:
    rendered = RENDERER.render(request("order_confirmation", data=ORDER_DATA))
    assert rendered.subject == "Your order A-1001 is confirmed"
    assert rendered.text is not None
    assert rendered.html is not None
    assert "- 2 x Blue widget: 12.50" in rendered.text
    assert "- 1 x Gadget: 1,234.50" in rendered.text
    assert "Total: 1,259.50" in rendered.text
    for value in ("Bob", "A-1001", "Blue widget", "12.50", "1,234.50", "1,259.50"):
        assert value in rendered.html


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (12.5, "12.50"),
        (3, "3.00"),
        ("19.9", "19.90"),
        (" 7 ", "7.00"),
        (0.1 + 0.2, "0.30"),
        ("-4.999", "-5.00"),
        ("€12.00", "€12.00"),
        ("1e999999", "1e999999"),
        ("NaN", "NaN"),
        (True, "True"),
        (None, "None"),
    ],
)
def test_money_formats_numbers_and_shows_anything_else_as_given(value: Any, shown: str) -> None:
    assert money(value) == shown


def test_html_is_autoescaped_and_text_is_not() -> None:
    rendered = RENDERER.render(request(data={"name": "<script>alert(1)</script>"}))
    assert rendered.html is not None
    assert rendered.text is not None
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "Hi <script>alert(1)</script>," in rendered.text
    assert rendered.subject == "Welcome, <script>alert(1)</script>!"


def test_missing_variable_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="'name' is undefined"):
        RENDERER.render(request(data={}))


def test_wrong_shape_of_data_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="order_confirmation"):
        RENDERER.render(request("order_confirmation", data={**ORDER_DATA, "items": 5}))


def test_unknown_template_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        RENDERER.render(request("nope"))


def test_subject_override_is_used_literally() -> None:
    rendered = RENDERER.render(request(subject="Hello {{ name }}", data={"name": "Alice"}))
    assert rendered.subject == "Hello {{ name }}"
    assert rendered.text is not None
    assert "Hi Alice," in rendered.text


def test_raw_request_is_returned_untouched() -> None:
    raw = request(None, subject="  {{ x }} ", text="{{ y }}\r\n", html="<b>{{ z }}</b>")
    rendered = RENDERER.render(raw)
    assert (rendered.subject, rendered.text, rendered.html) == (
        "  {{ x }} ",
        "{{ y }}\r\n",
        "<b>{{ z }}</b>",
    )


@pytest.mark.parametrize("name", ["Bob\r\nBcc: eve@example.com", "Bob\nX: y", "Bob\rX"])
def test_line_break_injected_into_the_subject_is_refused(name: str) -> None:
    with pytest.raises(TemplateError, match="line break"):
        RENDERER.render(request(data={"name": name}))


def test_rendered_subject_is_stripped(tmp_path: Path) -> None:
    write(tmp_path, {"note.subject.txt": "\n  Note for {{ who }}  \n\n", "note.txt": "hi\n"})
    rendered = TemplateRenderer(tmp_path).render(request("note", data={"who": "Ann"}))
    assert rendered.subject == "Note for Ann"
    assert (rendered.text, rendered.html) == ("hi\n", None)


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "''.__class__.__mro__[1].__subclasses__()",
        "cycler.__init__.__globals__",
        "name.__class__",
    ],
)
def test_sandbox_blocks_attribute_escapes(tmp_path: Path, expression: str) -> None:
    write(tmp_path, {"evil.subject.txt": "x", "evil.txt": "{{ " + expression + " }}"})
    renderer = TemplateRenderer(tmp_path)
    with pytest.raises(TemplateError, match="evil"):
        renderer.render(request("evil", data={"name": "Bob"}))


@pytest.mark.parametrize(
    "expression",
    [
        "d.name",
        "d.missing",
        "d.items",
        "d['items']",
        "d.keys() | list",
        "d.update",
        "d.update({})",
        "d.__class__",
        "d.__len__()",
        "d.get('name')",
        "d.nested.deeper",
        "d.nested.items",
        "d.list.append",
        "d.name.upper()",
        "d.name.__class__",
    ],
)
def test_dict_attribute_lookups_behave_as_in_jinjas_immutable_sandbox(expression: str) -> None:
    """The cheap path for ``item.name`` on plain dicts gives what the sandbox gave."""
    data = {
        "d": {
            "name": "Ann",
            "items": [1, 2],
            "update": "a key named like a method",
            "nested": {"deeper": 3, "items": "x"},
            "list": [],
        }
    }
    source = "{{ " + expression + " }}"
    reference = ImmutableSandboxedEnvironment(undefined=StrictUndefined)

    def outcome(render: Callable[[], str]) -> str:
        try:
            return "ok: " + render()
        except Exception as exc:  # noqa: BLE001 - the same failure, whatever its class
            return f"{type(exc).__name__}: {exc}"

    ours = outcome(lambda: RENDERER._env.from_string(source).render(data))
    theirs = outcome(lambda: reference.from_string(source).render(data))
    assert ours == theirs


def test_sandbox_forbids_mutating_data(tmp_path: Path) -> None:
    write(tmp_path, {"mut.subject.txt": "x", "mut.txt": "{{ items.append(1) }}"})
    items: list[int] = []
    with pytest.raises(TemplateError):
        TemplateRenderer(tmp_path).render(request("mut", data={"items": items}))


def test_extra_dir_adds_and_overrides_whole_templates(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "welcome.subject.txt": "Hey {{ name }}",
            "welcome.html": "<p>Hey {{ name }}</p>",
            "digest.subject.txt": "Digest",
            "digest.txt": "news",
        },
    )
    renderer = TemplateRenderer(tmp_path)
    assert renderer.names == frozenset(
        {"welcome", "password_reset", "order_confirmation", "digest"}
    )
    rendered = renderer.render(request(data={"name": "Al"}))
    # The override replaces the whole template: the built-in text body is not kept.
    assert (rendered.subject, rendered.text, rendered.html) == ("Hey Al", None, "<p>Hey Al</p>")
    assert renderer.render(request("digest")).text == "news"


def test_extra_template_can_extend_the_builtin_layout(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "promo.subject.txt": "Sale",
            "promo.html": '{% extends "_layout.html" %}{% block content %}<b>{{ pct }}%</b>'
            "{% endblock %}",
        },
    )
    html = TemplateRenderer(tmp_path).render(request("promo", data={"pct": 20})).html
    assert html is not None
    assert "<b>20%</b>" in html
    assert "<!DOCTYPE html>" in html


def test_broken_syntax_fails_at_construction_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path, {"bad.subject.txt": "ok", "bad.html": "<p>\n{% for x in %}</p>"})
    with pytest.raises(TemplateError, match=r"bad\.html: line 2"):
        TemplateRenderer(tmp_path)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"lonely.txt": "body"}, "no lonely.subject.txt"),
        ({"lonely.subject.txt": "subject"}, "neither"),
        ({"Shout.subject.txt": "s", "Shout.txt": "b"}, "not a valid template name"),
    ],
)
def test_incomplete_or_misnamed_templates_fail_at_construction(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    write(tmp_path, files)
    with pytest.raises(TemplateError, match=message):
        TemplateRenderer(tmp_path)


def test_other_files_in_extra_dir_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "{% broken", "notes.json": "{}"})
    assert TemplateRenderer(tmp_path).names == RENDERER.names
