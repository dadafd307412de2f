"""LLM-as-judge (AlpaGasus): a teacher rates each row 0-5 and rows under 4.5 are dropped.

AlpaGasus kept about 9k of Alpaca's 52k rows by asking a strong model to rate the
accuracy of each response to its instruction and input, then keeping ratings of
4.5 and above. The prompt below is the paper's rating prompt; the dimension it
rates (accuracy by default; the authors also used helpfulness) and the threshold
are settings. The score is the first number of the judge's first line; an answer
without one (or out of 0-5) is dropped as `judge_unparsed` so that a flaky judge
never lets rows through unseen. Calls go through the teacher layer's cache, so a
rerun or a resumed run asks nothing twice, and the score feeds `select` and the
dedup filters' keep=score policy.
"""

from __future__ import annotations

import re

import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin
from factory.teachers.teacher import Request, Sampling, TeacherConfig
from filters._llm import ask

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
TEMPLATE = """###Instruction:
{instruction}

### Input:
{input}

### Response:
{response}

We would like to request your feedback on the performance of AI assistant in response to the instruction and the given input displayed above.
Please rate according to the {dimension} of the response to the instruction and the input. Each assistant receives a score on a scale of 0 to 5, where a higher score indicates higher level of the {dimension}.
Please first output a single line containing the value indicating the scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias."""
NUMBER = re.compile(r"\d+(?:\.\d+)?")


class JudgeConfig(BaseModel):
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    dimension: str = Field("accuracy", description="what the judge rates (AlpaGasus: accuracy, helpfulness)")
    threshold: float = Field(4.5, ge=0, le=5, description="lowest rating kept (AlpaGasus: 4.5)")
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.0, max_tokens=128), description="judge decoding"
    )


def rating(text: str | None) -> float | None:
    """The judge's score: the first number on its first non-empty line, when it is within 0-5."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    found = NUMBER.search(lines[0]) if lines else None
    value = float(found.group()) if found else None
    return value if value is not None and 0 <= value <= 5 else None


def requests(rows: pl.DataFrame, config: JudgeConfig) -> list[Request]:
    return [
        Request(
            messages=(
                ("system", SYSTEM),
                ("user", TEMPLATE.format(instruction=i, input=n, response=o, dimension=config.dimension)),
            ),
            sampling=config.sampling,
        )
        for i, n, o in rows.select("instruction", "input", pl.col("output").fill_null("")).iter_rows()
    ]


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: JudgeConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: the judge's rating as the score, kept at or above the threshold."""
    samples = ask(ctx, config.teacher, requests(candidates, config))
    scores, reasons = [], []
    for sample in samples:
        value = rating(sample.text)
        scores.append(value)
        if sample.error is not None:
            reasons.append(f"judge_failed {sample.error[:80]}")
        elif value is None:
            reasons.append(f"judge_unparsed {(sample.text or '').strip()[:40]!r}")
        elif value < config.threshold:
            reasons.append(f"judge_score {value:g} < {config.threshold:g}")
        else:
            reasons.append(f"judge_score {value:g}")
    score = pl.Series("score", scores, pl.Float64)
    return (
        candidates.select("id")
        .with_columns(score, pl.Series("reason", reasons))
        .select("id", (pl.col("score").fill_null(-1) >= config.threshold).alias("keep"), "score", "reason")
    )


plugin = FilterPlugin(
    name="judge",
    config=JudgeConfig,
    run=run,
    summary="LLM-as-judge (AlpaGasus): a teacher rates accuracy 0-5, keep >= 4.5",
)
