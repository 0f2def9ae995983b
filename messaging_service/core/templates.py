"""Loading the email templates once at start-up, and rendering a request with them."""

from __future__ import annotations

import contextvars
import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from jinja2 import DictLoader, StrictUndefined, Template, TemplateSyntaxError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from messaging_service.core.contract import EmailRequest
from messaging_service.core.values import RenderedEmail
from messaging_service.errors import InvalidPayloadError, TemplateError

BUILTIN_DIR = Path(__file__).parent.parent / "templates"

# Longest suffix first: "x.subject.txt" also ends with ".txt".
_SUFFIXES = ((".subject.txt", "subject"), (".txt", "text"), (".html", "html"))
# The same rule as EmailRequest.template, so every loaded template can be asked for, with an
# optional BCP 47 locale: "welcome", "welcome.de", "welcome.de-AT".
_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,99}(\.[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3})?")
# A price with more digits than this is shown as given, so a hostile string such as "1e999999"
# can never make the formatter build a huge number.
_MAX_PRICE_DIGITS = 30
# Most items (characters, list items) one '*' may build, and most bits one '**' may build:
# so data such as {"n": 1e12} cannot make "=" * n or 10 ** n allocate without bound.
_MAX_REPEAT = 1_000_000
_MAX_POWER_BITS = 100_000
DEFAULT_RENDER_TIMEOUT = 1.0

# Attribute names a plain dict has (methods and dunders): for any other name, jinja's
# ``getattr(dict, name)`` fails and the sandbox falls back to the item, which is what
# ``_GuardedSandbox.getattr`` does directly.
_DICT_ATTRIBUTES = frozenset(dir(dict))

# The monotonic deadline of the render running in this context (inf: none running).
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar(
    "render_deadline", default=math.inf
)


class _RenderLimitError(Exception):
    """A render ran past its deadline or tried to build something huge (raised in hooks)."""


def _check_deadline() -> None:
    if time.monotonic() > _deadline.get():
        raise _RenderLimitError("rendering took longer than EMAIL_RENDER_TIMEOUT")


class _GuardedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with the render deadline checked wherever a template touches data.

    Rendering is synchronous and cannot be interrupted from outside without killing the
    process, so the template interrupts itself: every attribute or item lookup, call, output
    expression (``finalize``) and arithmetic operator checks the deadline. Loops are bounded
    too, since a loop body that does anything with its data passes one of these points.
    """

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        # ``item.name`` on a plain dict (JSON data): the sandbox would try the attribute first
        # and catch an AttributeError before looking the item up, an exception per lookup.
        # For an exact dict whose type has no such attribute the outcome is known in advance.
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        return super().getitem(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja2's own signature
        _check_deadline()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        _check_size(operator, left, right)
        return super().call_binop(context, operator, left, right)


def _check_size(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            repeat = isinstance(seq, str | list | tuple) and isinstance(count, int)
            if repeat and len(seq) * count > _MAX_REPEAT:
                raise _RenderLimitError(
                    f"'*' would build {len(seq) * count} items, more than {_MAX_REPEAT}"
                )
        both_ints = _is_int(left) and _is_int(right)
        if both_ints and left.bit_length() + right.bit_length() > _MAX_POWER_BITS:
            raise _RenderLimitError(f"'*' would build a number over {_MAX_POWER_BITS} bits")
    elif operator == "**" and _is_int(left) and _is_int(right) and _huge_power(left, right):
        raise _RenderLimitError(f"'**' would build a number over {_MAX_POWER_BITS} bits")


def _huge_power(base: int, exponent: int) -> bool:
    return exponent > 0 and abs(base) > 1 and base.bit_length() * exponent > _MAX_POWER_BITS


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finalize(value: Any) -> Any:
    _check_deadline()
    return value


@dataclass(frozen=True, slots=True)
class _Compiled:
    subject: Template
    text: Template | None
    html: Template | None


class TemplateRenderer:
    """Compiles the built-in templates (and those of ``extra_dir``) once; renders requests.

    Layout per template NAME: ``NAME.subject.txt`` and ``NAME.txt`` and/or ``NAME.html``.
    A template in ``extra_dir`` replaces the built-in one of the same name as a whole (all its
    parts), so an override never mixes new and old bodies. Files whose name starts with ``_``
    are partials: compiled and checked too, usable with ``{% include %}``/``{% extends %}``,
    but never sent on their own; an extra partial replaces a built-in one of the same file name.
    """

    def __init__(
        self, extra_dir: Path | None = None, *, render_timeout: float = DEFAULT_RENDER_TIMEOUT
    ) -> None:
        self._render_timeout = render_timeout
        sources = _read_dir(BUILTIN_DIR)
        if extra_dir is not None:
            extra = _read_dir(extra_dir)
            # A template replaces the built-in one with all its locales, so a changed English
            # text never sits next to a stale built-in translation.
            replaced = {_base(name) for name in extra}
            sources = {n: s for n, s in sources.items() if _base(n) not in replaced}
            sources.update(extra)
        self._env = _GuardedSandbox(
            finalize=_finalize,
            loader=DictLoader({name: source for name, (source, _) in sources.items()}),
            undefined=StrictUndefined,
            autoescape=_is_html,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            # Everything is compiled below; includes are then served from this cache without
            # ever checking the loader again, so the hot path never parses.
            auto_reload=False,
            cache_size=-1,
        )
        self._env.filters["money"] = money
        compiled = {name: self._compile(name, origin) for name, (_, origin) in sources.items()}
        for template in compiled.values():
            # jinja keeps a template's globals as a ChainMap over the environment's and copies
            # it twice per render; the globals never change after start-up, so flatten them.
            template.globals = dict(template.globals)
        self._templates = _assemble(compiled)

    @property
    def names(self) -> frozenset[str]:
        """Template names a request can ask for (without locales)."""
        return frozenset(name.split(".", 1)[0] for name in self._templates)

    @property
    def variants(self) -> frozenset[tuple[str, str | None]]:
        """Every (name, locale) there are template files for; None is the default locale."""
        return frozenset(
            (name, locale or None)
            for name, _, locale in (key.partition(".") for key in self._templates)
        )

    def render(self, request: EmailRequest) -> RenderedEmail:
        """Subject and bodies for ``request``; raise TemplateError saying what went wrong.

        Raises InvalidPayloadError when the request's data makes rendering exceed a limit
        (the render timeout, or a huge '*' or '**'): the data is at fault, not the template.
        """
        token = _deadline.set(time.monotonic() + self._render_timeout)
        try:
            return self._render_parts(request)
        except _RenderLimitError as exc:
            raise InvalidPayloadError(
                f"template {request.template!r}: {exc} ({self._render_timeout:g} s)"
                if "EMAIL_RENDER_TIMEOUT" in str(exc)
                else f"template {request.template!r}: {exc}"
            ) from exc
        finally:
            _deadline.reset(token)

    def _render_parts(self, request: EmailRequest) -> RenderedEmail:
        if request.template is None:
            assert request.subject is not None  # EmailRequest guarantees it without a template
            return RenderedEmail(subject=request.subject, text=request.text, html=request.html)
        template, locale = self._lookup(request.template, request.locale)
        data = request.data
        if request.subject is not None:
            subject = request.subject
        else:
            subject = _render(request.template, "subject", template.subject, data).strip()
            if "\r" in subject or "\n" in subject:
                raise TemplateError(
                    f"template {request.template!r}: the subject contains a line break"
                )
        text = (
            None
            if template.text is None
            else _render(request.template, "text", template.text, data)
        )
        html = (
            None
            if template.html is None
            else _render(request.template, "html", template.html, data)
        )
        return RenderedEmail(
            subject=subject, text=text, html=html, template=request.template, locale=locale
        )

    def _lookup(self, name: str, locale: str | None) -> tuple[_Compiled, str | None]:
        """NAME.de-at, then NAME.de, then NAME: the template and the locale it is for."""
        if locale is not None:
            for candidate in locale_chain(locale):
                template = self._templates.get(f"{name}.{candidate}")
                if template is not None:
                    return template, candidate
        template = self._templates.get(name)
        if template is None:
            raise TemplateError(f"unknown template {name!r}")
        return template, None

    def _compile(self, file_name: str, origin: str) -> Template:
        try:
            return self._env.get_template(file_name)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{origin}: line {exc.lineno}: {exc.message}") from exc


def money(value: Any) -> str:
    """A price with two decimals and thousands separators; anything else is shown as given."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return str(value)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return str(value)
    if not amount.is_finite() or amount.adjusted() > _MAX_PRICE_DIGITS:
        return str(value)
    return f"{amount:,.2f}"


def _render(name: str, part: str, template: Template, data: dict[str, Any]) -> str:
    try:
        return template.render(data)
    except _RenderLimitError:
        raise
    # Templates run on request data we do not control: besides jinja's own errors (undefined
    # variable, sandbox violation) any exception a filter or operator raises on odd values
    # (TypeError, ValueError, ZeroDivisionError, ...) is a fault of this request, so every one
    # of them becomes the permanent TemplateError rather than a crash of the worker.
    except Exception as exc:
        raise TemplateError(f"template {name!r} ({part}): {_reason(exc)}") from exc


def _reason(exc: Exception, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    text = text if type(exc).__module__.startswith("jinja2") else f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def locale_chain(locale: str) -> list[str]:
    """``de-AT`` -> ``["de-at", "de"]``: the locale, then each shorter prefix (lower-case)."""
    subtags = locale.lower().split("-")
    return ["-".join(subtags[:end]) for end in range(len(subtags), 0, -1)]


def _base(file_name: str) -> str:
    """The template name of a file, without locale or part: ``welcome.de.txt`` -> welcome."""
    return _split(file_name)[0].split(".", 1)[0]


def _is_html(file_name: str | None) -> bool:
    return file_name is not None and file_name.endswith(".html")


def _split(file_name: str) -> tuple[str, str]:
    """(template name, part) of a file name; the caller has checked the suffix."""
    for suffix, part in _SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)], part
    raise AssertionError(file_name)


def _read_dir(directory: Path) -> dict[str, tuple[str, str]]:
    """File name -> (source, where it came from, for messages) of every template file."""
    sources: dict[str, tuple[str, str]] = {}
    try:
        paths = sorted(directory.iterdir())
    except OSError as exc:
        raise TemplateError(f"cannot list templates in {directory}: {exc}") from exc
    for path in paths:
        if not path.name.endswith((".txt", ".html")) or not path.is_file():
            continue
        name, _ = _split(path.name)
        if not name.startswith("_") and not _NAME.fullmatch(name):
            raise TemplateError(
                f"{path}: {name!r} is not a valid template name (lowercase letters, digits, "
                "'_' and '-'; start partials with '_')"
            )
        try:
            sources[path.name] = (path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read template {path}: {exc}") from exc
    return sources


def _assemble(compiled: dict[str, Template]) -> dict[str, _Compiled]:
    parts: dict[str, dict[str, Template]] = {}
    for file_name, template in compiled.items():
        name, part = _split(file_name)
        if not name.startswith("_"):
            base, dot, locale = name.partition(".")
            parts.setdefault(base + dot + locale.lower(), {})[part] = template
    templates: dict[str, _Compiled] = {}
    for name, found in parts.items():
        if "subject" not in found:
            raise TemplateError(f"template {name!r} has no {name}.subject.txt")
        if "text" not in found and "html" not in found:
            raise TemplateError(f"template {name!r} has neither {name}.txt nor {name}.html")
        templates[name] = _Compiled(found["subject"], found.get("text"), found.get("html"))
    return templates
