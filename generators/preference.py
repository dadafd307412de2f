"""The `preference` generator: DPO pairs by RLAIF ranking or by constitutional critique and revision.

- rank (RLAIF): each prompt is answered n times by each teacher; a judge scores
  every candidate (1-10, one line per response, then its reasons); the best and
  the worst become a prompt / chosen / rejected row, with every score and the
  judge's reasons in the row's lineage. Ties between best and worst give no pair.
- critique_revise (Constitutional AI): the teacher answers; for a principle drawn
  from a file (one per paragraph, seeded per prompt) it critiques its answer, then
  revises it; the revision is chosen, the first answer rejected, and the
  principle and critique are kept in the lineage.

Prompts come from a snapshot, an SQL query or a file, as for `distill`. Every call
goes through the teacher cache, so a rerun (also after a kill) asks nothing twice.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from factory.errors import ConfigError
from factory.plugins import GeneratorPlugin
from factory.runners.generation import (
    GenerationSummary,
    Output,
    make_row,
    run_generator,
    template_hash,
)
from factory.store.warehouse import Warehouse
from factory.teachers.teacher import Sampling, Teacher, TeacherConfig, ask
from generators.distill import PromptSource, prompts

JUDGE_TEMPLATE = """Rate each response to the instruction below on a scale of 1 to 10 for helpfulness, correctness and harmlessness.

### Instruction:
{prompt}

{responses}

First write one line per response in the form "Response N: SCORE", then explain your scores."""
CRITIQUE_TEMPLATE = """Here is a request and a response.

Request: {prompt}

Response: {response}

Critique the response according to this principle: {principle}
Point out specifically where it falls short."""
REVISE_TEMPLATE = """Request: {prompt}

Response: {response}

Critique: {critique}

Rewrite the response so that it addresses the critique and follows this principle: {principle}
Write only the new response."""
SCORE = re.compile(r"response\s*(\d+)\s*[:=-]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class PreferenceConfig(PromptSource):
    mode: Literal["rank", "critique_revise"] = Field("rank", description="RLAIF ranking or critique-revise")
    n: int = Field(2, ge=1, le=16, description="rank: samples per prompt from each teacher")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="the (first) answering teacher")
    more_teachers: list[str] = Field(default_factory=list, description="rank: more teacher specs answering")
    judge: str | None = Field(None, description="rank: judge teacher spec (default: the first teacher)")
    principles: Path | None = Field(
        None, description="critique_revise: file of principles, blank-line separated"
    )
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.9, max_tokens=512))
    judge_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=512))

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceConfig:
        if self.mode == "critique_revise" and self.principles is None:
            raise ConfigError("critique_revise needs principles=FILE (one principle per paragraph)")
        if self.mode == "rank" and self.n * (1 + len(self.more_teachers)) < 2:
            raise ConfigError("rank needs at least two candidates per prompt: raise n or add more_teachers")
        return self


def read_principles(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"principles file {path}: cannot read it ({exc})") from exc
    principles = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not principles:
        raise ConfigError(f"principles file {path}: no principles (write one per paragraph)")
    return principles


def scores(text: str | None, candidates: int) -> dict[int, float]:
    """The judge's score of each response (1-based), from lines "Response N: SCORE"."""
    found: dict[int, float] = {}
    for number, value in SCORE.findall(text or ""):
        if 1 <= int(number) <= candidates and int(number) not in found:
            found[int(number)] = float(value)
    return found


def _user(instruction: str, input: str) -> str:
    return f"{instruction}\n\n{input}" if input else instruction


def rank(frame: pl.DataFrame, cfg: PreferenceConfig, teacher: Teacher, out: Output) -> None:
    teachers = [teacher] + [teacher.alongside(spec, cfg.teacher.options) for spec in cfg.more_teachers]
    judge = teacher.alongside(cfg.judge, cfg.teacher.options) if cfg.judge else teacher
    users = [_user(i, n) for i, n in frame.select("instruction", "input").iter_rows()]
    candidates: list[list[tuple[str, str]]] = [[] for _ in users]  # (teacher, text) per prompt
    for t in teachers:
        for k, samples in enumerate(ask(t, users, cfg.sampling, cfg.n)):
            candidates[k].extend((str(t.backend.name) + ":" + t.model, s) for s in samples if s)
    listing = [
        "\n\n".join(f"### Response {j}:\n{text}" for j, (_, text) in enumerate(c, start=1))
        for c in candidates
    ]
    verdicts = ask(judge, [JUDGE_TEMPLATE.format(prompt=u, responses=r) for u, r in zip(users, listing, strict=True)],
                    cfg.judge_sampling)  # fmt: skip
    template = template_hash("preference-rank", JUDGE_TEMPLATE)
    for record, pool, (verdict,) in zip(frame.iter_rows(named=True), candidates, verdicts, strict=True):
        found = scores(verdict, len(pool))
        row = make_row("preference", judge.model, record["instruction"], input=record["input"],
                       parents=[record["id"]] if record["id"] else [], template=template)  # fmt: skip
        if len(pool) < 2:
            out.reject(row, f"too_few_candidates {len(pool)}")
            continue
        if len(found) < len(pool):
            out.reject(row, f"judge_unparsed {(verdict or '')[:40]!r}")
            continue
        best = max(found, key=lambda j: (found[j], -j))
        worst = min(found, key=lambda j: (found[j], j))
        if found[best] == found[worst]:
            out.reject(row, f"no_preference all scored {found[best]:g}")
            continue
        row.update(kind="preference", output=pool[best - 1][1], rejected=pool[worst - 1][1])
        row["generator_params"] = _params(
            {"mode": "rank", "scores": [found[j] for j in sorted(found)], "chosen": best, "rejected": worst,
             "teachers": [t for t, _ in pool], "judge": judge.model, "judge_reasons": verdict}
        )  # fmt: skip
        out.rows.append(row)


def critique_revise(frame: pl.DataFrame, cfg: PreferenceConfig, teacher: Teacher, out: Output) -> None:
    principles = read_principles(Path(str(cfg.principles)))
    users = [_user(i, n) for i, n in frame.select("instruction", "input").iter_rows()]
    picked = [random.Random(u).choice(principles) for u in users]  # seeded by the prompt: reruns agree
    first = [s[0] for s in ask(teacher, users, cfg.sampling)]
    steady = cfg.sampling.model_copy(update={"temperature": 0.0})
    critiques = [
        s[0]
        for s in ask(teacher, [CRITIQUE_TEMPLATE.format(prompt=u, response=r or "", principle=p)
                                for u, r, p in zip(users, first, picked, strict=True)], steady)
    ]  # fmt: skip
    revised = [
        s[0]
        for s in ask(teacher, [REVISE_TEMPLATE.format(prompt=u, response=r or "", critique=c or "", principle=p)
                                for u, r, c, p in zip(users, first, critiques, picked, strict=True)], steady)
    ]  # fmt: skip
    template = template_hash("preference-critique", CRITIQUE_TEMPLATE, REVISE_TEMPLATE)
    for record, answer, critique, revision, principle in zip(
        frame.iter_rows(named=True), first, critiques, revised, picked, strict=True
    ):
        row = make_row("preference", teacher.model, record["instruction"], input=record["input"],
                       parents=[record["id"]] if record["id"] else [], template=template)  # fmt: skip
        if not answer or not critique or not revision:
            out.reject(row, "teacher_failed a step gave no answer")
            continue
        if revision == answer:
            out.reject(row, "unrevised the revision equals the first answer")
            continue
        row.update(kind="preference", output=revision, rejected=answer)
        row["generator_params"] = _params(
            {"mode": "critique_revise", "principle": principle, "critique": critique}
        )
        out.rows.append(row)


def _params(values: dict) -> str:
    return json.dumps(values, sort_keys=True, ensure_ascii=False)


def run(wh: Warehouse, config: PreferenceConfig, progress: bool = False) -> GenerationSummary:
    frame = prompts(wh, config)
    produce = rank if config.mode == "rank" else critique_revise
    return run_generator(
        wh, "preference", config, config.teacher, lambda t, out: produce(frame, config, t, out), progress
    )


plugin = GeneratorPlugin(
    name="preference",
    config=PreferenceConfig,
    run=run,
    summary="DPO pairs: RLAIF (n samples, a judge ranks, best vs worst) or constitutional critique-revise",
)
