"""OpenAI's published rules for chat fine-tuning files, checked on our side before an upload.

A file OpenAI rejects costs a round trip (upload, validation job, error mail); one whose
examples run past the model's limit is silently truncated there. So the `openai` export
checks its own files against the rules below and says, per rule, how many examples
break it and on which lines. Sources:

- [docs] OpenAI platform docs, "Supervised fine-tuning", sections "Preparing your
  dataset" / "Example format" / "Token limits" (chat format: one JSON object per line
  with a `messages` list of {role, content}; at least 10 examples; per-example token
  limits per model; a `weight` of 0 or 1 on assistant messages).
- [cookbook] OpenAI Cookbook, "Data preparation and analysis for chat model
  fine-tuning" (examples/Chat_finetuning_data_prep.ipynb): the format checks
  `data_type`, `missing_messages_list`, `message_missing_key`,
  `message_unrecognized_key`, `unrecognized_role`, `missing_content`,
  `example_missing_assistant_message`, and the token count of a conversation:
  3 tokens per message, the tokens of each value, 1 more for a `name`, 3 to prime
  the reply.

Tokens are counted with o200k_base, the encoding of the gpt-4o family that OpenAI
fine-tunes, from the `bpe-openai` package, which ships the encoding's table
(tiktoken downloads its tables at run time, which these machines cannot).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from factory.errors import ConfigError, SetupError

MIN_EXAMPLES = 10  # [docs] "you are required to provide at least 10 examples" (a training file)
ROLES = {"system", "user", "assistant", "tool", "function"}  # [cookbook] + [docs] tool turns
KEYS = {  # [cookbook] message_unrecognized_key, with the keys [docs] allows per role
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "weight", "tool_calls", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
    "function": {"role", "content", "name"},
}
# [docs] "Token limits": the most tokens one training example may hold, per base model.
LIMITS = {
    "gpt-4.1-2025-04-14": 65_536,
    "gpt-4.1-mini-2025-04-14": 65_536,
    "gpt-4.1-nano-2025-04-14": 65_536,
    "gpt-4o-2024-08-06": 65_536,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-0613": 4_096,
}
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
ENCODING = "o200k_base"

# rule -> what it means, for the report; errors make OpenAI refuse the file, warnings do not.
ERRORS = {
    "too_few_examples": f"fewer than {MIN_EXAMPLES} examples [docs]",
    "data_type": "a line that is not a JSON object [cookbook]",
    "missing_messages_list": "no non-empty `messages` list [cookbook]",
    "message_missing_key": "a message without `role` or `content` [cookbook]",
    "message_unrecognized_key": "a message key OpenAI does not accept for its role [cookbook]",
    "unrecognized_role": f"a role other than {', '.join(sorted(ROLES))} [cookbook]",
    "missing_content": "a message whose content is not a non-empty string [cookbook]",
    "example_missing_assistant_message": "no assistant message to learn [cookbook]",
    "system_not_first": "a system message after the first message [docs: the system message opens the "
    "conversation]",
    "bad_weight": "an assistant `weight` other than 0 or 1 [docs]",
}
WARNINGS = {
    "over_token_limit": "more tokens than the model's per-example limit: OpenAI truncates it [docs]",
    "ends_without_assistant": "turns after the last assistant message, which train nothing [docs: only "
    "assistant messages are learned]",
}


@dataclass
class Report:
    """What the rules found in one file: per rule, how many examples and their first lines."""

    examples: int = 0
    model: str = DEFAULT_MODEL
    limit: int = LIMITS[DEFAULT_MODEL]
    errors: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    lines: dict[str, list[int]] = field(default_factory=dict)
    tokens_max: int = 0
    tokens_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def note(self, rule: str, line: int) -> None:
        (self.errors if rule in ERRORS else self.warnings)[rule] += 1
        seen = self.lines.setdefault(rule, [])
        if line and len(seen) < 5:
            seen.append(line)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "encoding": ENCODING,
            "token_limit": self.limit,
            "examples": self.examples,
            "tokens_total": self.tokens_total,
            "tokens_max": self.tokens_max,
            "errors": dict(self.errors),
            "warnings": dict(self.warnings),
            "lines": self.lines,
        }


@cache
def _encoding() -> Any:
    try:
        import bpe_openai
    except ImportError as exc:  # a core dependency: only a broken install lacks it
        raise SetupError("counting OpenAI tokens needs bpe-openai: pip install 'bpe-openai==0.1.4'") from exc
    return bpe_openai.get_encoding(ENCODING)


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """[cookbook] num_tokens_from_messages: 3 per message, each value's tokens, 1 per name, 3 to prime."""
    encoding = _encoding()
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if isinstance(value, str):
                total += len(encoding.encode(value))
            if key == "name":
                total += 1
    return total


def _message_rules(message: Any, position: int) -> list[str]:
    if not isinstance(message, dict):
        return ["message_missing_key"]
    found = []
    role = message.get("role")
    if "role" not in message or ("content" not in message and not message.get("tool_calls")):
        found.append("message_missing_key")
    if role not in ROLES:
        found.append("unrecognized_role")
    elif set(message) - KEYS[role]:
        found.append("message_unrecognized_key")
    content = message.get("content")
    tool_call = role == "assistant" and message.get("tool_calls") and content is None
    if not tool_call and not (isinstance(content, str) and content.strip()):
        found.append("missing_content")
    if role == "system" and position > 0:
        found.append("system_not_first")
    if role == "assistant" and "weight" in message and message["weight"] not in (0, 1):
        found.append("bad_weight")
    return found


def check_example(example: Any, line: int, report: Report) -> None:
    """Apply every per-example rule to one parsed line."""
    report.examples += 1
    if not isinstance(example, dict):
        report.note("data_type", line)
        return
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        report.note("missing_messages_list", line)
        return
    broken = {rule for k, m in enumerate(messages) for rule in _message_rules(m, k)}
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        broken.add("example_missing_assistant_message")
    elif roles[-1] != "assistant":
        broken.add("ends_without_assistant")
    for rule in sorted(broken):
        report.note(rule, line)
    if all(isinstance(m, dict) for m in messages):
        tokens = count_tokens(messages)
        report.tokens_total += tokens
        report.tokens_max = max(report.tokens_max, tokens)
        if tokens > report.limit:
            report.note("over_token_limit", line)


def check_file(path: Path, model: str = DEFAULT_MODEL, training: bool = True) -> Report:
    """Check a chat fine-tuning JSONL file against OpenAI's rules for `model` (the minimum number of
    examples applies to a training file, not to a validation file)."""
    if model not in LIMITS:
        raise ConfigError(
            f"unknown OpenAI model '{model}' for the token limit: choose one of {', '.join(LIMITS)}"
        )
    report = Report(model=model, limit=LIMITS[model])
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                example = json.loads(text)
            except ValueError:
                report.examples += 1
                report.note("data_type", number)
                continue
            check_example(example, number, report)
    if training and report.examples < MIN_EXAMPLES:
        report.note("too_few_examples", 0)
    return report
