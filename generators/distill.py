"""Distillation: a teacher answers prompts; each answer becomes a row with its lineage.

Prompts come from a snapshot, a SQL query over the warehouse, or a file (JSONL
with an `instruction` or `prompt` field and an optional `input`, or plain text
with one prompt a line). Each gets `n` responses. An optional system prompt
steers the teacher, as in the survey's Table V: a role ("You are an expert in
..."), chain-of-thought, or a required output format. Base models without a chat
template are prompted in completion style (an Alpaca-style "### Instruction /
### Response" frame). Rows record the teacher, the template's hash and the prompt
row as parent; empty and cut-off answers are stored as rejected rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError
from factory.formats.readers import ReadError, jsonl_records
from factory.plugins import GeneratorPlugin
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


class DistillConfig(PromptSource):
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
        records.append({"instruction": text, "input": str(data.get("input") or "")})
    return pl.DataFrame(records, schema={"instruction": pl.String, "input": pl.String})


def prompts(wh: Warehouse, cfg: PromptSource) -> pl.DataFrame:
    """The prompts as a frame with instruction, input and parent id (NULL for file prompts)."""
    if cfg.file is not None:
        frame = _from_file(cfg.file)
    elif cfg.on is not None:
        frame = wh.sql(f"SELECT id, instruction, input FROM snapshot('{cfg.on}') ORDER BY id")
    else:
        frame = wh.user_sql(str(cfg.query))
        if "instruction" not in frame.columns:
            raise ConfigError("the prompt query must return an 'instruction' column")
    for column in ("id", "input"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None if column == "id" else "", pl.String).alias(column))
    frame = frame.select("id", "instruction", pl.col("input").fill_null(""))
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
    requests = [
        request_for(instruction, input, system, chat, cfg.sampling, cfg.n)
        for _, instruction, input in records
    ]
    answers = teacher.generate(requests)
    params = [
        params_json({"system": cfg.system, "sample": k, "temperature": cfg.sampling.temperature})
        for k in range(cfg.n)
    ]  # the same for every prompt: serialised once
    for (parent, instruction, input), samples in zip(records, answers, strict=True):
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
            if sample.error:
                out.reject(row, f"teacher_failed {sample.error}")
            elif sample.finish_reason == "length":
                out.reject(row, "truncated the answer hit max_tokens")
            elif not text:
                out.reject(row, "empty_output")
            else:
                out.rows.append(row)


def run(wh: Warehouse, config: DistillConfig, progress: bool = False) -> GenerationSummary:
    frame = prompts(wh, config)
    return run_generator(
        wh,
        "distill",
        config,
        config.teacher,
        lambda t, out: distill(frame, config, t, out, "distill"),
        progress,
    )


plugin = GeneratorPlugin(
    name="distill",
    config=DistillConfig,
    run=run,
    summary="a teacher answers prompts from a snapshot, query or file (n each, optional system templates)",
)
