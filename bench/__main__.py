"""``python -m bench``: the benchmark suite (see docs/benchmarks.md); ``--help`` for options."""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from support.apache_kafka import ApacheKafkaBroker, missing
from support.kafka import EmbeddedBroker

from . import report
from .content_mode import content_markdown
from .content_mode import variants as content_variants
from .crash import CrashPlan, CrashResult, crash_markdown, measure_crash
from .memory import measure_memory, memory_markdown
from .profile import profile_markdown, profile_service
from .runner import (
    Context,
    Point,
    Target,
    describe,
    measure_plain,
    measure_service,
    steps,
)
from .tools import REPO, ensure_smtp_sink

# The crash benchmark's service uses Tansu's lowered group timeouts (bench.service): its
# Apache Kafka knowingly accepts them, below the 6 s default minimum session.
CRASH_KAFKA_CONFIG = "group.min.session.timeout.ms=1000\ngroup.initial.rebalance.delay.ms=0"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a sweep measures and how big each point is."""

    workers: tuple[int, ...]
    zero_workers: tuple[int, ...]
    seconds: float
    zero_count: int
    min_count: int
    max_count: int
    fixed_counts: dict[int, int] | None = None
    """Quick mode: emails per latency-bound point by worker count, not sized by time."""
    failure_workers: tuple[int, ...] = ()
    """The transient-failure pairs: failure-free and failing, back to back, at these counts."""


QUICK = Plan(
    workers=(1, 10),
    zero_workers=(50,),
    seconds=0,
    zero_count=500,
    min_count=60,
    max_count=500,
    fixed_counts={1: 60, 10: 200},
    failure_workers=(10,),
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark messaging-service end to end against a plain send loop.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small counts, about a minute")
    mode.add_argument("--memory", action="store_true", help="peak RSS with a huge backlog")
    mode.add_argument("--profile", action="store_true", help="py-spy profile of the service")
    mode.add_argument(
        "--content",
        action="store_true",
        help="CPU per email with a 100 KiB attachment and with DKIM (RSA, Ed25519)",
    )
    mode.add_argument(
        "--crash",
        action="store_true",
        help="duplicates after kill -9 with and without offset maps (Apache Kafka)",
    )
    parser.add_argument("--crash-runs", type=int, default=3, help="pairs of crash runs")
    parser.add_argument("--crash-requests", type=int, default=2000)
    parser.add_argument("--crash-kill-after", type=int, default=1000)
    parser.add_argument("--crash-workers", type=int, default=10)
    parser.add_argument("--workers", type=_ints, default=(1, 10, 50, 100, 200))
    parser.add_argument("--zero-workers", type=_ints, default=(50, 100))
    parser.add_argument("--delay", type=float, default=0.05, help="latency-bound relay delay, s")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="latency-bound delays vary by ± this share"
    )
    parser.add_argument(
        "--failure-workers",
        type=_ints,
        default=(10, 100),
        help="worker counts of the transient-failure pairs (empty: none)",
    )
    parser.add_argument(
        "--failure-share",
        type=float,
        default=0.05,
        help="share of messages the relay refuses once with 451 in the failing runs",
    )
    parser.add_argument("--seconds", type=float, default=12, help="aimed length of each point")
    parser.add_argument("--zero-count", type=int, default=15_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--log-level", default="INFO", help="the service's LOG_LEVEL")
    parser.add_argument("--memory-requests", type=int, default=1_000_000)
    parser.add_argument("--memory-process", type=int, default=100_000)
    parser.add_argument("--memory-workers", type=int, default=100)
    parser.add_argument("--profile-workers", type=int, default=50)
    parser.add_argument("--profile-seconds", type=float, default=20)
    parser.add_argument("--profile-count", type=int, default=40_000)
    parser.add_argument("--content-workers", type=int, default=50)
    parser.add_argument("--content-count", type=int, default=6000, help="emails per point")
    parser.add_argument(
        "--content-attachment-count",
        type=int,
        default=2000,
        help="emails per point with an attachment (each ~137 KB in Kafka and in the sink)",
    )
    parser.add_argument("--out", type=Path, help="docs folder (default docs/, quick: build/)")
    parser.add_argument("--work-dir", type=Path, help="logs of every process of the run")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO / ("build/bench-quick" if args.quick else "docs")
    if args.work_dir is None:
        args.work_dir = REPO / "build" / "bench" / time.strftime("%Y%m%d-%H%M%S")
    return args


def say(text: str) -> None:
    print(text, flush=True)


def _broker_pid(port: int) -> int | None:
    """The Tansu process listening on ``port`` (to measure its CPU), found in /proc."""
    needle = f"tcp://127.0.0.1:{port}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"tansu") and needle.encode() in command:
            return int(entry.name)
    return None


async def run(args: argparse.Namespace) -> None:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.crash:  # the crash runs use the delay sink only
        ensure_smtp_sink()
    machine = report.Machine.current()
    say(f"bench: {machine.line()}")
    say(f"bench: output in {args.out}, logs in {args.work_dir}")
    if args.crash:
        await _crash(args, machine)
        return
    with EmbeddedBroker(log_dir=args.work_dir / "broker") as broker:
        quick = args.quick
        ctx = Context(
            bootstrap=broker.bootstrap,
            broker_pid=_broker_pid(broker.port),
            work_dir=args.work_dir,
            partitions=args.partitions,
            log_level=args.log_level,
            # The paced latency phase after each backlog: how long, and at least how many.
            latency_seconds=1.0 if quick else 3.0,
            latency_min=10 if quick else 50,
            say=say,
        )
        if args.memory:
            await _memory(ctx, args, machine)
        elif args.profile:
            await _profile(ctx, args, machine)
        elif args.content:
            await _content(ctx, args, machine)
        else:
            await _sweep(ctx, args, machine)


async def _sweep(ctx: Context, args: argparse.Namespace, machine: report.Machine) -> None:
    plan = QUICK if args.quick else _plan(args)
    latency = Target("latency", args.delay, args.jitter)
    zero = Target("zero")
    points: list[Point] = []
    failing = Target("latency", args.delay, args.jitter, fail_share=args.failure_share)
    total = 2 * (len(plan.zero_workers) + len(plan.workers) + len(plan.failure_workers))
    numbers = steps(total)
    began = time.monotonic()

    async def step(label: str, measure: Callable[[], Awaitable[Point]]) -> None:
        number = next(numbers)
        say(f"{number} {label}")
        point = await measure()
        points.append(point)
        say(f"{' ' * len(number)} -> {describe(point)}")

    for workers in plan.zero_workers:
        count = plan.zero_count
        limit = _time_limit(count, 100)
        await step(
            f"service, {zero.label}, {workers} workers, {count:,} emails",
            functools.partial(
                measure_service, ctx, zero, workers=workers, count=count, limit=limit
            ),
        )
        await step(
            f"plain loop, {zero.label}, {workers} connections, {count:,} emails",
            functools.partial(
                measure_plain, ctx, zero, concurrency=workers, count=count, limit=limit
            ),
        )
    for workers in plan.workers:
        for program in ("service", "plain"):
            count = _latency_count(plan, points, program, workers, latency)
            rate = min(latency.ideal(workers) or 1, _ceiling(points, program))
            limit = _time_limit(count, rate * 0.2)
            if program == "service":
                await step(
                    f"service, {latency.label}, {workers} workers, {count:,} emails",
                    functools.partial(
                        measure_service, ctx, latency, workers=workers, count=count, limit=limit
                    ),
                )
            else:
                await step(
                    f"plain loop, {latency.label}, {workers} connections, {count:,} emails",
                    functools.partial(
                        measure_plain, ctx, latency, concurrency=workers, count=count, limit=limit
                    ),
                )
    for workers in plan.failure_workers:
        # Failure-free and failing back to back, so both see the same machine.
        for target in (latency, failing):
            count = _latency_count(plan, points, "service", workers, latency)
            rate = min(latency.ideal(workers) or 1, _ceiling(points, "service"))
            await step(
                f"service, {target.label}, {workers} workers, {count:,} emails",
                functools.partial(
                    measure_service,
                    ctx,
                    target,
                    workers=workers,
                    count=count,
                    limit=_time_limit(count, rate * 0.2),
                    series="failures",
                ),
            )
    finished = machine.finished()
    mode = "quick" if args.quick else "full"
    details = (
        f"Template `order_confirmation` (text + HTML), {args.partitions} partitions, "
        f"service LOG_LEVEL={args.log_level}; throughput and CPU over the middle 80 % of "
        "each backlog; latency from the record timestamp to the relay's acceptance, "
        "measured in a paced phase at half the measured throughput."
    )
    body = report.results_markdown(finished, points, latency=latency, mode=mode, details=details)
    chart = args.out / report.CHART_NAME
    report.chart(chart, finished, points, latency=latency)
    body += f"\n![throughput against workers]({report.CHART_NAME})\n"
    report.write_json(
        args.out / report.JSON_NAME,
        finished,
        points,
        mode=mode,
        delay=args.delay,
        jitter=args.jitter,
    )
    doc = args.out / report.DOC_NAME
    report.replace_section(doc, "results", body)
    say(f"bench: done in {time.monotonic() - began:.0f} s; wrote {doc}, {chart}")
    print("\n" + body)


def _plan(args: argparse.Namespace) -> Plan:
    return Plan(
        workers=args.workers,
        zero_workers=args.zero_workers,
        seconds=args.seconds,
        zero_count=args.zero_count,
        min_count=200,
        max_count=40_000,
        failure_workers=args.failure_workers,
    )


def _ceiling(points: list[Point], program: str) -> float:
    """The best zero-latency rate measured for ``program`` so far: its CPU-bound ceiling."""
    rates = [
        p.throughput
        for p in points
        if p.program == program and p.target == "zero" and p.series == "sweep"
    ]
    return max(rates, default=2000.0)


def _latency_count(
    plan: Plan, points: list[Point], program: str, workers: int, latency: Target
) -> int:
    if plan.fixed_counts is not None:
        return plan.fixed_counts.get(workers, plan.min_count)
    expected = min(latency.ideal(workers) or 1, _ceiling(points, program) * 1.1)
    return max(plan.min_count, min(plan.max_count, int(expected * plan.seconds)))


def _time_limit(count: int, slowest_rate: float) -> float:
    return count / max(slowest_rate, 1.0) + 120


async def _memory(ctx: Context, args: argparse.Namespace, machine: report.Machine) -> None:
    say(
        f"[1/1] memory: {args.memory_requests:,} requests waiting, "
        f"{args.memory_workers} workers, until {args.memory_process:,} are sent"
    )
    result = await measure_memory(
        ctx,
        requests=args.memory_requests,
        workers=args.memory_workers,
        process=args.memory_process,
        limit=args.memory_process / 50 + 300,
    )
    say(f"      -> peak RSS {result.peak_rss_mb:.0f} MB, {result.throughput:,.0f} emails/s")
    body = memory_markdown(result, machine_line=machine.finished().line())
    report.write_json(
        args.out / "benchmark-memory.json", machine.finished(), [], memory=asdict(result)
    )
    doc = args.out / report.DOC_NAME
    report.replace_section(doc, "memory", body)
    say(f"bench: wrote {doc}")
    print("\n" + body)


async def _profile(ctx: Context, args: argparse.Namespace, machine: report.Machine) -> None:
    say(
        f"[1/1] profile: service, zero-latency relay, {args.profile_workers} workers, "
        f"py-spy for {args.profile_seconds:g} s"
    )
    profile = await profile_service(
        ctx,
        workers=args.profile_workers,
        count=args.profile_count,
        seconds=args.profile_seconds,
    )
    body = f"Measured {machine.finished().line()}.\n\n" + profile_markdown(profile)
    doc = args.out / report.DOC_NAME
    report.replace_section(doc, "profile", body)
    say(f"bench: wrote {doc}")
    print("\n" + body)


async def _content(ctx: Context, args: argparse.Namespace, machine: report.Machine) -> None:
    zero = Target("zero")
    runs = content_variants(args.work_dir)
    points: list[Point] = []
    for number, variant in enumerate(runs, 1):
        count = args.content_attachment_count if variant.attachment_bytes else args.content_count
        say(
            f"[{number}/{len(runs)}] content: {variant.name}, {args.content_workers} workers, "
            f"{count:,} emails"
        )
        point = await measure_service(
            ctx,
            zero,
            workers=args.content_workers,
            count=count,
            limit=count / 20 + 300,
            series="content",
            variant=variant,
        )
        say(f"      -> {describe(point)}")
        points.append(point)
    finished = machine.finished()
    body = content_markdown(points, machine_line=finished.line(), workers=args.content_workers)
    report.write_json(args.out / "benchmark-content.json", finished, points)
    doc = args.out / report.DOC_NAME
    report.replace_section(doc, "content", body)
    say(f"bench: wrote {doc}")
    print("\n" + body)


async def _crash(args: argparse.Namespace, machine: report.Machine) -> None:
    reason = missing()
    if reason is not None:
        raise SystemExit(f"bench --crash: {reason}")
    plan = CrashPlan(
        requests=args.crash_requests,
        workers=args.crash_workers,
        kill_after=args.crash_kill_after,
        delay=args.delay,
        partitions=args.partitions,
    )
    results: list[CrashResult] = []
    total = 2 * args.crash_runs
    with ApacheKafkaBroker(
        args.work_dir / "apache-kafka", extra_config=CRASH_KAFKA_CONFIG
    ) as kafka:
        say(f"bench: Apache Kafka at {kafka.bootstrap}")
        for number in range(total):
            offset_map = number % 2 == 0
            say(f"[{number + 1}/{total}] crash run, offset map {'on' if offset_map else 'off'}")
            result = await measure_crash(
                kafka.bootstrap,
                args.work_dir,
                plan,
                offset_map=offset_map,
                run_id=f"crash{number}-{time.strftime('%H%M%S')}",
            )
            results.append(result)
            say(
                f"      -> sent before {result.sent_before}, committed {result.committed_before}, "
                f"mapped {result.mapped_before}, skipped {result.skipped}, "
                f"duplicates {result.duplicates} ({result.share:.0%})"
            )
    body = crash_markdown(plan, results, machine_line=machine.finished().line())
    doc = args.out / report.DOC_NAME
    report.replace_section(doc, "crash", body)
    say(f"bench: wrote {doc}")
    print("\n" + body)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
