"""Guard model: a Llama Guard-style safety classifier, through any teacher, drops unsafe rows.

The prompt is Llama Guard's: a task line, the unsafe-content categories (Llama
Guard 3's fourteen by default, configurable), the conversation, and the request
to answer `safe` or `unsafe` with the violated categories on a second line. It
assesses the response (`Agent`, with the user turn as context) or the prompt
(`User`). Run it with a Llama Guard model behind vLLM or an OpenAI-compatible
server for real use; any instruction model answers the same format. Rows are
dropped as `unsafe S1,S10` (with the category names), and an answer that is
neither safe nor unsafe is dropped as `guard_unparsed` (fail closed) unless
`unparsed: keep`.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import user_turn
from factory.teachers.teacher import Request, Sampling, TeacherConfig
from filters._llm import ask

CATEGORIES = {
    "S1": "Violent Crimes.",
    "S2": "Non-Violent Crimes.",
    "S3": "Sex-Related Crimes.",
    "S4": "Child Sexual Exploitation.",
    "S5": "Defamation.",
    "S6": "Specialized Advice.",
    "S7": "Privacy.",
    "S8": "Intellectual Property.",
    "S9": "Indiscriminate Weapons.",
    "S10": "Hate.",
    "S11": "Suicide & Self-Harm.",
    "S12": "Sexual Content.",
    "S13": "Elections.",
    "S14": "Code Interpreter Abuse.",
}
TEMPLATE = """Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
{categories}
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

{conversation}

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories."""


class GuardConfig(BaseModel):
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    categories: dict[str, str] = Field(default_factory=lambda: dict(CATEGORIES), description="code -> name")
    assess: Literal["Agent", "User"] = Field("Agent", description="judge the response (Agent) or the prompt")
    unparsed: Literal["drop", "keep"] = Field("drop", description="what to do with an unreadable answer")
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.0, max_tokens=32), description="guard decoding"
    )


def prompt(user: str, response: str, config: GuardConfig) -> str:
    categories = "\n".join(f"{code}: {name}" for code, name in config.categories.items())
    conversation = f"User: {user}" + (f"\n\nAgent: {response}" if config.assess == "Agent" else "")
    return TEMPLATE.format(role=config.assess, categories=categories, conversation=conversation)


def verdict(text: str | None, config: GuardConfig) -> tuple[bool, str]:
    """(keep, reason) from the guard's answer."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    first = lines[0].lower() if lines else ""
    if first.startswith("unsafe"):
        codes = [c.strip() for c in (lines[1] if len(lines) > 1 else "").split(",") if c.strip()]
        named = ", ".join(f"{c} {config.categories.get(c, '?').rstrip('.')}" for c in codes)
        return False, f"unsafe {','.join(codes)}" + (f" ({named})" if codes else "")
    if first.startswith("safe"):
        return True, "safe"
    return config.unparsed == "keep", f"guard_unparsed {first[:40]!r}"


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: GuardConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: kept when the guard says safe."""
    texts = candidates.select(user_turn().alias("u"), pl.col("output").fill_null(""))
    asks = [
        Request(messages=(("user", prompt(u, o, config)),), sampling=config.sampling)
        for u, o in texts.iter_rows()
    ]
    judged = [
        (False, f"guard_failed {s.error[:80]}") if s.error is not None else verdict(s.text, config)
        for s in ask(ctx, config.teacher, asks)
    ]
    return candidates.select("id").with_columns(
        pl.Series("keep", [k for k, _ in judged], pl.Boolean), pl.Series("reason", [r for _, r in judged])
    )


plugin = FilterPlugin(
    name="guard",
    config=GuardConfig,
    run=run,
    summary="safety: Llama Guard-style classifier through a teacher (configurable categories)",
)
