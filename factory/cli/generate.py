"""`factory generate NAME` and `factory teacher check`: rows made by teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from factory.cli.common import (
    ConfigFile,
    RayAddress,
    Settings,
    Warehouse,
    check_engine,
    console,
    fail,
    open_warehouse,
    shown,
    values,
)

teacher_app = typer.Typer(help="Teachers: the models generators ask.", no_args_is_help=True)


def generate(
    name: Annotated[str, typer.Argument(help="generator: distill, self-instruct, evol-instruct, ...")],
    teacher: Annotated[
        str | None,
        typer.Option(
            help="BACKEND:MODEL[@BASE_URL], e.g. openai:gpt-4o-mini, hf:embedded [default: hf:embedded]"
        ),
    ] = None,
    on: Annotated[str | None, typer.Option("--on", help="snapshot to start from (prompts or seeds)")] = None,
    query: Annotated[str | None, typer.Option(help="distill: SQL returning the prompts")] = None,
    file: Annotated[Path | None, typer.Option(help="distill: file of prompts (JSONL or text)")] = None,
    n: Annotated[int | None, typer.Option("--n", help="distill: responses per prompt")] = None,
    rounds: Annotated[int | None, typer.Option(help="self-instruct / evol-instruct: rounds")] = None,
    limit: Annotated[int | None, typer.Option(help="use at most this many prompts / pool items")] = None,
    max_calls: Annotated[
        int | None, typer.Option(help="stop cleanly after this many teacher requests")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="stop cleanly after this many tokens")] = None,
    concurrency: Annotated[int | None, typer.Option(help="openai: requests in flight")] = None,
    timeout: Annotated[float | None, typer.Option(help="openai: per-request timeout in seconds")] = None,
    focus_from: Annotated[
        str | None,
        typer.Option(
            "--focus-from",
            help="distill / self-instruct: steer toward the domains and constraint types this "
            "training run did worst on in its held-out evaluation",
        ),
    ] = None,
    test_set: Annotated[
        str | None,
        typer.Option(
            "--test-set",
            help="distill / self-instruct: JSONL test file or snapshot; new rows that share a 12-word "
            "n-gram with it get drop verdicts (decontaminate)",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(help="local, or ray: the teacher's requests answered by actors on a Ray cluster"),
    ] = "local",
    ray_address: RayAddress = None,
    set_: Settings = None,
    config: ConfigFile = None,
    quiet: Annotated[bool, typer.Option(help="no progress line")] = False,
    warehouse: Warehouse = None,
) -> None:
    """Make rows with a teacher; every call is cached, so a rerun resumes where a run stopped.

    The flags are shortcuts for config keys of the generator (a key it does not have is
    refused); every other setting is --set KEY=VALUE or --config FILE.yaml.
    Examples:
      factory generate self-instruct --on seeds --rounds 2
      factory generate distill --on new --teacher openai:tiny@http://127.0.0.1:8000/v1 --n 2
      factory generate evol-instruct --on seeds --limit 20 --max-calls 500
      factory generate distill --on pool --limit 200 --focus-from run_123 --test-set test.jsonl
      factory generate distill --on new --engine ray --ray-address 10.0.0.5:6379 \
          --teacher openai:qwen@http://10.0.0.7:8000/v1,http://10.0.0.8:8000/v1
    """
    import factory

    check_engine(engine, ray_address)

    settings = values(config, set_)
    flags = {
        "on": on, "query": query, "file": file, "n": n, "rounds": rounds, "limit": limit,
        "teacher.teacher": teacher, "teacher.max_calls": max_calls, "teacher.max_tokens": max_tokens,
        "teacher.options.concurrency": concurrency, "teacher.options.timeout_s": timeout,
        "focus_from": focus_from, "test_set": test_set,
    }  # fmt: skip
    settings.update({k: v for k, v in flags.items() if v is not None})
    wh = open_warehouse(warehouse)
    _print_generation(
        factory.generate(wh, name, progress=not quiet, engine=engine, ray_address=ray_address, **settings)
    )


def _print_generation(summary: Any) -> None:
    out = console()
    if getattr(summary, "waited_for", None):
        out.print(f"waited for {shown(summary.waited_for)}")
    stats = getattr(summary, "teacher_stats", None)
    if not stats and not hasattr(summary, "accepted"):  # not a generation summary (an import): its counts
        counts = ", ".join(
            f"{k} {shown(v)}" for k, v in summary.as_dict().items() if k != "job_id" and v is not None
        )
        out.print(f"[bold]done[/] (job {summary.job_id}): {counts}")
        return
    state = "[yellow]stopped[/]: " + shown(summary.stopped) if summary.stopped else "[green]done[/]"
    teacher = f" with {shown(summary.teacher)}" if stats else ""  # mosaic, token-level augment: none
    out.print(f"[bold]{summary.generator}[/]{teacher} (job {summary.job_id}): {state}")
    out.print(
        f"  accepted {summary.accepted:,} row(s), {summary.inserted:,} new to the warehouse; "
        f"rejected {sum(summary.rejected.values()):,}"
    )
    for reason, count in sorted(summary.rejected.items(), key=lambda kv: -kv[1]):
        out.print(f"    {shown(reason):<28} {count:,}")
    if not stats:
        out.print(f"  see them: factory sql \"SELECT * FROM rows WHERE job_id = '{summary.job_id}'\"")
        return
    out.print(
        f"  teacher: {stats.get('samples', 0):,} samples, {stats.get('cache_hits', 0):,} from the cache, "
        f"{stats.get('calls', 0):,} requests ({stats.get('failed_attempts', 0):,} failed and retried), "
        f"{stats.get('prompt_tokens', 0) + stats.get('completion_tokens', 0):,} tokens"
    )
    if getattr(summary, "engine", "local") != "local":
        out.print(f"  on {shown(summary.engine)}")
    if stats.get("errors"):
        out.print("  failed attempts: " + ", ".join(f"{shown(k)} {v}" for k, v in stats["errors"].items()))
    _print_focus(summary)
    out.print(f"  see them: factory sql \"SELECT * FROM rows WHERE job_id = '{summary.job_id}'\"")


def _print_focus(summary: Any) -> None:
    """A focused round's weights and draw, and the decontamination of its new rows (or a warning)."""
    out = console()
    focus = getattr(summary, "focus", None)
    if focus:
        out.print(f"  focus: run {shown(focus['run'])} (held-out loss per domain; {shown(focus['formula'])})")
        drawn = getattr(summary, "drawn", None) or {}
        for domain, weight in sorted(focus["used"].items(), key=lambda kv: -kv[1]):
            loss = focus["losses"].get(domain)
            told = f"loss {loss:.3f}" if loss is not None else "not in the run: floor"
            count = f", {drawn[domain]:,} drawn" if domain in drawn else ""
            out.print(f"    {shown(domain):<20} weight {weight:.3f} ({told}{count})")
        if focus["checkers"]:
            worst = ", ".join(f"{shown(c)} {rate:.0%}" for c, rate in list(focus["checkers"].items())[:5])
            out.print(f"    checkers failed most: {worst}")
    cleaned = getattr(summary, "decontamination", None)
    if cleaned:
        out.print(
            f"  decontaminated against {shown(cleaned.get('test_set', ''))}: {cleaned['checked']:,} row(s) "
            f"checked, {cleaned['dropped']:,} dropped as contaminated (filter job {cleaned['job_id']})"
        )
    warning = getattr(summary, "warning", None)
    if warning:
        out.print(f"  [yellow]warning[/]: {shown(warning)}")


@teacher_app.command("check")
def teacher_check(
    spec: Annotated[str, typer.Argument(help="BACKEND:MODEL[@BASE_URL]")],
    timeout: Annotated[float, typer.Option(help="request timeout in seconds")] = 60.0,
) -> None:
    """Send one request to a teacher and show the latency and the answer."""
    from factory.teachers.teacher import TeacherOptions, check

    result = check(spec, TeacherOptions(timeout_s=timeout, max_retries=1))
    if result["text"] is None:
        fail(f"{result['teacher']}: no answer ({'; '.join(result['failed_attempts'])})")
    out = console()
    out.print(
        f"{shown(result['teacher'])} ({result['style']}): loaded in {result['load_s']} s, answered in "
        f"{result['latency_s']} s, {result['completion_tokens']} tokens, finish {result['finish_reason']}"
    )
    out.print(shown(repr(result["text"])))


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.add_typer(teacher_app, name="teacher")
