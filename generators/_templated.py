"""Templated import in the FLAN / P3 / Super-NaturalInstructions style.

A task file (YAML or JSON) holds several Jinja templates that turn the fields of
an ordinary labelled dataset (premise, hypothesis, label, ...) into an
instruction, an optional input and an output. Each source record gets one
template picked at random (seeded, and stable whatever the batch size) or every
template in turn. Rows remember the task and template in their lineage.

    task: nli
    templates:
      - name: premise_question
        instruction: "{{ premise }}\\nQuestion: does this imply that \\"{{ hypothesis }}\\"?"
        output: "{{ ['yes', 'maybe', 'no'][label | int] }}"
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Literal

import jinja2
import polars as pl
import yaml
from pydantic import BaseModel, Field, ValidationError

from factory.formats import templating
from factory.formats.readers import Problem, ReadError


class Template(BaseModel):
    name: str = Field(description="template name, recorded in each row's lineage")
    instruction: str = Field(description="Jinja template of the instruction")
    input: str = Field("", description="Jinja template of the input (optional)")
    output: str = Field(description="Jinja template of the output")

    @property
    def digest(self) -> str:
        text = json.dumps([self.instruction, self.input, self.output])
        return hashlib.md5(text.encode()).hexdigest()


class TemplateTask(BaseModel):
    task: str = Field(description="task name, recorded in each row's lineage")
    templates: list[Template] = Field(min_length=1)


def load_task(path: Path) -> TemplateTask:
    """Read and validate a task file, naming the file and field on error."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReadError(f"{path}: cannot read the template file ({exc})") from exc
    try:
        task = TemplateTask.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReadError(f"{path}: field '{where}': {first['msg']}") from exc
    env = templating.environment()
    for template in task.templates:
        for part in ("instruction", "input", "output"):
            try:
                env.from_string(getattr(template, part))
            except jinja2.TemplateSyntaxError as exc:
                raise ReadError(
                    f"{path}: template '{template.name}' field '{part}' line {exc.lineno}: {exc.message}"
                ) from exc
    return task


def render(
    records: pl.DataFrame, task: TemplateTask, mode: Literal["random", "all"], seed: int
) -> tuple[pl.DataFrame, list[Problem]]:
    """Alpaca rows (instruction, input, output, lineage, _origin) from raw records.

    Templates render in the factory's Jinja sandbox (`factory.jinja_sandbox`): a template that
    reaches for Python internals, or builds too much, or runs too long, is a template_error."""
    env = templating.environment()
    compiled = [
        (t, env.from_string(t.instruction), env.from_string(t.input), env.from_string(t.output))
        for t in task.templates
    ]
    out: dict[str, list] = {
        k: [] for k in ("instruction", "input", "output", "_origin", "generator_params", "template_hash")
    }
    problems: list[Problem] = []
    for record in records.iter_rows(named=True):
        origin = record.pop("_origin")
        record = {k: v for k, v in record.items() if v is not None}  # a null field is a missing field
        chosen = compiled if mode == "all" else [random.Random(f"{seed}:{origin}").choice(compiled)]
        for template, instruction, inp, output in chosen:
            try:
                values = [templating.render(t, record) for t in (instruction, inp, output)]
            except jinja2.UndefinedError as exc:
                problems.append(
                    Problem(origin, None, "template_error", f"template '{template.name}': {exc.message}")
                )
                continue
            except Exception as exc:  # a template may fail on this record's values (index, filter)
                problems.append(Problem(origin, None, "template_error", f"template '{template.name}': {exc}"))
                continue
            for key, value in zip(("instruction", "input", "output"), values, strict=True):
                out[key].append(value)
            out["_origin"].append(origin)
            out["generator_params"].append(json.dumps({"task": task.task, "template": template.name}))
            out["template_hash"].append(template.digest)
    return pl.DataFrame(out, schema={k: pl.String for k in out}), problems
