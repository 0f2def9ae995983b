"""The content run: CPU per email with a 100 KiB attachment and with DKIM (RSA, Ed25519)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .runner import Point, Variant

ATTACHMENT_BYTES = 100 * 1024
DKIM_DOMAIN = "shop.example.com"


def _key_file(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _dkim(key_file: Path) -> tuple[tuple[str, str], ...]:
    return (
        ("DKIM_DOMAIN", DKIM_DOMAIN),
        ("DKIM_SELECTOR", "bench"),
        ("DKIM_PRIVATE_KEY_FILE", str(key_file)),
    )


def variants(work_dir: Path) -> list[Variant]:
    """The baseline first and again last (so a drift of the machine shows), the rest between."""
    rsa_key = _key_file(work_dir / "dkim-rsa.pem", rsa.generate_private_key(65537, 2048))
    ed_key = _key_file(work_dir / "dkim-ed25519.pem", ed25519.Ed25519PrivateKey.generate())
    return [
        Variant("no attachment, DKIM off"),
        Variant("100 KiB attachment", ATTACHMENT_BYTES),
        Variant("DKIM RSA-2048", env=_dkim(rsa_key)),
        Variant("DKIM Ed25519", env=_dkim(ed_key)),
        Variant("100 KiB attachment + DKIM RSA-2048", ATTACHMENT_BYTES, _dkim(rsa_key)),
        Variant("no attachment, DKIM off (again)"),
    ]


def content_markdown(points: Sequence[Point], *, machine_line: str, workers: int) -> str:
    baseline = [p.cpu_ms_per_email for p in points if not p.variant.startswith(("100", "DKIM"))]
    base = sum(baseline) / len(baseline) if baseline else 0.0
    lines = [
        f"Measured {machine_line}.",
        "",
        f"The service with {workers} workers against the zero-latency relay (smtp-sink), the "
        "template `order_confirmation` as in the sweep; each variant changes one thing. "
        "CPU over the middle 80 % of each backlog; + CPU is the difference to the mean of the "
        "two baseline runs (the first and the last).",
        "",
        "| variant | emails | emails/s | service CPU ms/email | + CPU ms/email | "
        "smtp-sink CPU ms/email | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        extra = point.cpu_ms_per_email - base
        lines.append(
            f"| {point.variant} | {point.emails:,} | {point.throughput:,.0f} | "
            f"{point.cpu_ms_per_email:.2f} | {extra:+.2f} | {point.sink_cpu_ms_per_email:.2f} | "
            f"{point.peak_rss_mb:.0f} |"
        )
    problems = [f"- {p.variant}: {problem}" for p in points for problem in p.problems]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines) + "\n"
