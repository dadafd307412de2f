"""Distillation: a teacher answers prompts; each answer becomes a row with its lineage.

Prompts come from a snapshot, a SQL query over the warehouse, or a file (JSONL
with an `instruction` or `prompt` field and an optional `input`, or plain text
with one prompt a line). Each gets `n` responses. An optional system prompt
steers the teacher, as in the survey's Table V: a role ("You are an expert in
..."), chain-of-thought, or a required output format. Base models without a chat
template are prompted in completion style (an Alpaca-style "### Instruction /
### Response" frame). Rows record the teacher, the template's hash and the prompt
row as parent; empty and cut-off answers are stored as rejected rows.

With `focus_from` (a training run id) the `limit` prompts are drawn per domain by the
weights of that run's held-out metrics (`factory.runners.focus`): domain d gets
round(limit * w_d) of its prompts, by largest remainder, picked at random with the
teacher's seed; a prompt domain the run did not evaluate gets the floor weight. The
job's config records the run and the weights, each row names the run in its params and
takes its prompt's domain. With `test_set` the accepted rows are then checked against a
test file or snapshot by the `decontaminate` filter; a focused round without one says
that its rows were not decontaminated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError
from factory.formats.readers import ReadError, jsonl_records
from factory.plugins import GeneratorPlugin
from factory.runners import focus as focusing
from factory.runners.generation import (
    GenerationSummary,
    Output,
    make_row,
    params_json,
    run_generator,
    template_hash,
)
from factory.store.warehouse import Warehouse
from factory.teachers.teacher import Request, Sampling, Teacher, TeacherConfig

SYSTEM_TEMPLATES = {
    "role": "You are {role}. Answer the user's request accurately and helpfully.",
    "cot": "Think step by step: reason through the problem first, then give the final answer.",
    "format": "Answer in this format: {format}",
}
COMPLETION_FRAME = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


class PromptSource(BaseModel):
    """Where a teacher generator's prompts come from: a snapshot, an SQL query or a file."""

    on: str | None = Field(None, description="snapshot whose rows' instructions are the prompts")
    query: str | None = Field(
        None, description="SQL returning an instruction column (and optional input, id)"
    )
    file: Path | None = Field(
        None, description="JSONL (instruction or prompt, input) or text file of prompts"
    )
    limit: int | None = Field(None, gt=0, description="use at most this many prompts")

    @model_validator(mode="after")
    def _one_source(self) -> PromptSource:
        if sum(x is not None for x in (self.on, self.query, self.file)) != 1:
            raise ConfigError("give exactly one source of prompts: on (a snapshot), query or file")
        return self


class DistillConfig(PromptSource, focusing.FocusSettings):
    """Settings of one distillation run (the CLI flags and the Python API share them)."""

    n: int = Field(1, gt=0, le=16, description="responses per prompt")
    system: Literal["none", "role", "cot", "format"] = Field("none", description="system-prompt template")
    role: str = Field("an expert assistant", description="who the teacher is, for --system role")
    format: str = Field("a short paragraph", description="the required output format, for --system format")
    style: Literal["auto", "chat", "completion"] = Field(
        "auto", description="chat messages or a completion prompt; auto picks by whether the model chats"
    )
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=512))
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @model_validator(mode="after")
    def _focus_needs_limit(self) -> DistillConfig:
        if self.focus_from is not None and self.limit is None:
            raise ConfigError(
                "focus_from needs limit: the number of prompts to draw by the run's domain weights (--limit P)"
            )
        return self


def _from_file(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise ReadError(f"{path}: prompt file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        return pl.DataFrame({"instruction": [t.strip() for t in text.splitlines() if t.strip()]})
    records = []
    for number, data in jsonl_records(path, text):
        text = data.get("instruction", data.get("prompt")) if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ReadError(f"{path}:{number}: field 'instruction' (or 'prompt'): missing or not text")
        domain = data.get("domain") if isinstance(data, dict) else None
        records.append({"instruction": text, "input": str(data.get("input") or ""), "domain": domain})
    return pl.DataFrame(records, schema={"instruction": pl.String, "input": pl.String, "domain": pl.String})


def prompts(wh: Warehouse, cfg: PromptSource, domain: bool = False) -> pl.DataFrame:
    """The prompts as a frame with instruction, input and parent id (NULL for file prompts); with
    `domain`, also each prompt's domain ('general' when it has none, as the evaluation counts it)."""
    if cfg.file is not None:
        frame = _from_file(cfg.file)
    elif cfg.on is not None:
        frame = wh.sql(f"SELECT id, instruction, input, domain FROM {wh.snapshot_sql(cfg.on)} ORDER BY id")
    else:
        frame = wh.user_sql(str(cfg.query))
        if "instruction" not in frame.columns:
            raise ConfigError("the prompt query must return an 'instruction' column")
    for column in ("id", "input", "domain"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit("" if column == "input" else None, pl.String).alias(column))
    columns = ["id", "instruction", pl.col("input").fill_null("")]
    if domain:
        columns.append(pl.col("domain").cast(pl.String).fill_null("general"))
    frame = frame.select(columns)
    return frame.head(cfg.limit) if cfg.limit else frame


def system_prompt(cfg: DistillConfig) -> str:
    if cfg.system == "none":
        return ""
    return SYSTEM_TEMPLATES[cfg.system].format(role=cfg.role, format=cfg.format)


def request_for(
    instruction: str, input: str, system: str, chat: bool, sampling: Sampling, n: int = 1
) -> Request:
    """The teacher request for one prompt, as chat messages or a completion prompt."""
    if chat:
        user = f"{instruction}\n\n{input}" if input else instruction
        messages = ((("system", system),) if system else ()) + (("user", user),)
        return Request(messages=messages, sampling=sampling, n=n)
    frame = (f"{system}\n\n" if system else "") + COMPLETION_FRAME.format(
        with_input=", paired with an input that provides further context" if input else "",
        instruction=instruction,
        input_block=f"### Input:\n{input}\n\n" if input else "",
    )
    stop = tuple(dict.fromkeys((*sampling.stop, "\n### ")))
    return Request(prompt=frame, sampling=sampling.model_copy(update={"stop": stop}), n=n)


def distill(frame: pl.DataFrame, cfg: DistillConfig, teacher: Teacher, out: Output, generator: str) -> None:
    """Ask the teacher for every prompt of `frame` and put the answers (or rejections) in `out`."""
    chat = cfg.style == "chat" or (cfg.style == "auto" and teacher.backend.chat)
    system = system_prompt(cfg)
    template = template_hash(generator, system, "chat" if chat else COMPLETION_FRAME)
    records = frame.select("id", "instruction", "input").rows()
    domains = frame["domain"].to_list() if "domain" in frame.columns else [None] * frame.height
    requests = [
        request_for(instruction, input, system, chat, cfg.sampling, cfg.n)
        for _, instruction, input in records
    ]
    answers = teacher.generate(requests)
    focused = {"focus_from": cfg.focus_from} if cfg.focus_from else {}
    params = [
        params_json({"system": cfg.system, "sample": k, "temperature": cfg.sampling.temperature, **focused})
        for k in range(cfg.n)
    ]  # the same for every prompt: serialised once
    for (parent, instruction, input), domain, samples in zip(records, domains, answers, strict=True):
        for k, sample in enumerate(samples):
            text = (sample.text or "").strip()
            row = make_row(
                generator,
                teacher.model,
                instruction,
                output=text,
                input=input,
                parents=[parent] if parent else [],
                params=params[k],
                template=template,
                origin=f"{generator}:sample{k}",
            )
            if domain is not None:  # a focused round's rows keep their prompt's domain
                row["domain"] = domain
            if sample.error:
                out.reject(row, f"teacher_failed {sample.error}")
            elif sample.finish_reason == "length":
                out.reject(row, "truncated the answer hit max_tokens")
            elif not text:
                out.reject(row, "empty_output")
            else:
                out.rows.append(row)


def run(wh: Warehouse, config: DistillConfig, progress: bool = False) -> GenerationSummary:
    focus = focusing.focus_from(wh, config.focus_from) if config.focus_from else None
    if config.test_set is not None:
        focusing.test_set_values(wh, config.test_set)  # a wrong test set is refused before any call
    drawn = None
    if focus is None:
        frame = prompts(wh, config)
    else:
        pool = prompts(wh, config.model_copy(update={"limit": None}), domain=True)
        frame, weights, drawn = focusing.draw(pool, focus, int(config.limit or 0), config.teacher.seed)
        config = config.model_copy(update={"focus": focus.record(weights)})
    made: list[Output] = []

    def produce(t: Teacher, out: Output) -> None:
        made.append(out)
        distill(frame, config, t, out, "distill")

    summary = run_generator(wh, "distill", config, config.teacher, produce, progress)
    if focus is None and config.test_set is None:
        return summary
    rows: list[dict[str, Any]] = made[0].rows if made else []
    return focusing.finish_round(wh, summary, rows, config.focus, config.test_set, drawn)


plugin = GeneratorPlugin(
    name="distill",
    config=DistillConfig,
    run=run,
    summary="a teacher answers prompts from a snapshot, query or file (n each, optional system templates)",
)
