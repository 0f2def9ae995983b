"""Locales: NAME.de-AT, then NAME.de, then NAME; German variants of the built-in templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from messaging_service.core.contract import EmailRequest
from messaging_service.core.templates import TemplateRenderer, locale_chain

RENDERER = TemplateRenderer()
DATA = {
    "name": "Ada",
    "reset_url": "https://shop.example.com/r/1",
    "order_id": "A-1",
    "items": [{"name": "Tee", "quantity": 1, "price": 3}],
    "total": 3,
}


def render(renderer: TemplateRenderer, template: str, locale: str | None) -> tuple[str, ...]:
    request = EmailRequest(
        id="r", template=template, to=["a@example.com"], data=DATA, locale=locale
    )
    rendered = renderer.render(request)
    return rendered.subject, str(rendered.locale), str(rendered.template)


def test_locale_chain() -> None:
    assert locale_chain("de-AT") == ["de-at", "de"]
    assert locale_chain("zh-Hant-TW") == ["zh-hant-tw", "zh-hant", "zh"]


@pytest.mark.parametrize(
    ("locale", "subject", "used"),
    [
        ("de-AT", "Willkommen, Ada!", "de"),
        ("de", "Willkommen, Ada!", "de"),
        ("DE-ch", "Willkommen, Ada!", "de"),
        ("fr-FR", "Welcome, Ada!", "None"),
        (None, "Welcome, Ada!", "None"),
    ],
)
def test_builtin_fallback(locale: str | None, subject: str, used: str) -> None:
    assert render(RENDERER, "welcome", locale) == (subject, used, "welcome")


def test_every_builtin_template_has_a_german_variant_with_german_html() -> None:
    names = RENDERER.names
    assert names == {"welcome", "password_reset", "order_confirmation"}
    for name in names:
        assert (name, "de") in RENDERER.variants
        request = EmailRequest(id="r", template=name, to=["a@example.com"], data=DATA, locale="de")
        rendered = RENDERER.render(request)
        assert rendered.html is not None
        assert '<html lang="de">' in rendered.html
        assert "Sie erhalten diese E-Mail" in rendered.html


def test_most_specific_locale_wins(tmp_path: Path) -> None:
    for locale, greeting in (("", "Hello"), (".de", "Hallo"), (".de-AT", "Servus")):
        (tmp_path / f"hi{locale}.subject.txt").write_text(greeting + " {{ name }}")
        (tmp_path / f"hi{locale}.txt").write_text(greeting)
    renderer = TemplateRenderer(tmp_path)
    assert render(renderer, "hi", "de-AT") == ("Servus Ada", "de-at", "hi")
    assert render(renderer, "hi", "de-DE") == ("Hallo Ada", "de", "hi")
    assert render(renderer, "hi", "en") == ("Hello Ada", "None", "hi")


def test_an_override_replaces_every_locale_of_the_builtin(tmp_path: Path) -> None:
    (tmp_path / "welcome.subject.txt").write_text("Hey {{ name }}")
    (tmp_path / "welcome.txt").write_text("Hey")
    renderer = TemplateRenderer(tmp_path)
    assert render(renderer, "welcome", "de") == ("Hey Ada", "None", "welcome")
    assert render(renderer, "password_reset", "de")[0] == "Passwort zurücksetzen"


def test_password_reset_links_its_url_once_per_part() -> None:
    request = EmailRequest(id="r", template="password_reset", to=["a@example.com"], data=DATA)
    for locale in (None, "de"):
        rendered = RENDERER.render(request.model_copy(update={"locale": locale}))
        assert rendered.html is not None
        assert rendered.text is not None
        assert rendered.html.count(DATA["reset_url"]) == 1  # type: ignore[arg-type]
        assert rendered.text.count(DATA["reset_url"]) == 1  # type: ignore[arg-type]


def test_an_extra_layout_reaches_the_german_builtins_with_their_language_and_footer(
    tmp_path: Path,
) -> None:
    """German built-ins extend ``_layout_de.html``, which extends whichever ``_layout.html``."""
    (tmp_path / "_layout.html").write_text(
        '<html lang="{% block lang %}en{% endblock %}"><main>{% block content %}{% endblock %}'
        "</main><footer>{% block footer %}Ours{% endblock %}</footer></html>"
    )
    renderer = TemplateRenderer(tmp_path)
    request = EmailRequest(id="r", template="welcome", to=["a@example.com"], data=DATA)
    german = renderer.render(request.model_copy(update={"locale": "de"})).html
    english = renderer.render(request).html
    assert german is not None
    assert english is not None
    assert german.startswith('<html lang="de"><main>')
    assert "Willkommen, Ada!" in german
    assert german.endswith(
        "<footer>        Sie erhalten diese E-Mail, weil Sie ein Konto bei uns haben.\n"
        "</footer></html>"
    )
    assert english.startswith('<html lang="en"><main>')
    assert english.endswith("<footer>Ours</footer></html>")
