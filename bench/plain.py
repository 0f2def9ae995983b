"""The baseline: the send loop a user would write by hand, with no Kafka and no service.

    python -m bench.plain --port 2525 --concurrency 50 --count 10000 --run-id plain-1

The same requests as the service gets (``bench.workload.request``), rendered from the same
template files with a plain jinja2 environment, built with the standard library's
``EmailMessage`` (text plus HTML alternative) and sent with aiosmtplib over ``concurrency``
reused connections, one task per connection taking the next request from a shared iterator.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from decimal import Decimal
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2

from .content import SENDER, TEMPLATE, request

# The service's own template files, so both send the very same content.
TEMPLATES = Path(__file__).resolve().parent.parent / "messaging_service" / "templates"


def money(value: Any) -> str:
    return f"{Decimal(str(value)):,.2f}"


class Composer:
    """Renders a request and builds its ``EmailMessage``, as a hand-written script would."""

    def __init__(self, template: str = TEMPLATE) -> None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=jinja2.select_autoescape(["html"]),
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["money"] = money
        self._subject = env.get_template(f"{template}.subject.txt")
        self._text = env.get_template(f"{template}.txt")
        self._html = env.get_template(f"{template}.html")

    def compose(self, req: dict[str, Any]) -> EmailMessage:
        data = req["data"]
        message = EmailMessage()
        message["From"] = SENDER
        message["To"] = req["to"]
        message["Subject"] = self._subject.render(data).strip()
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain="example.com")
        message["X-Email-Id"] = req["id"]
        message.set_content(self._text.render(data))
        message.add_alternative(self._html.render(data), subtype="html")
        return message


async def send_all(
    requests: Iterator[dict[str, Any]], *, host: str, port: int, concurrency: int
) -> None:
    composer = Composer()

    async def connection() -> None:
        # local_hostname given: aiosmtplib would otherwise run getfqdn() for every connect.
        smtp = aiosmtplib.SMTP(hostname=host, port=port, local_hostname="bench.example.com")
        await smtp.connect()
        for req in requests:  # shared: each request is taken by exactly one connection
            await smtp.send_message(composer.compose(req))
        await smtp.quit()

    await asyncio.gather(*(connection() for _ in range(concurrency)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    requests = [request(args.run_id, index) for index in range(args.count)]
    asyncio.run(
        send_all(iter(requests), host=args.host, port=args.port, concurrency=args.concurrency)
    )


if __name__ == "__main__":
    main()
