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

Tokens are counted with the model's own encoding (o200k_base for the gpt-4o and gpt-4.1
families, cl100k_base for gpt-3.5-turbo and gpt-4), from the `bpe-openai` package,
which ships both tables (tiktoken downloads its tables at run time, which these machines
cannot).

Docs: https://platform.openai.com/docs/guides/supervised-fine-tuning
Cookbook: https://cookbook.openai.com/examples/chat_finetuning_data_prep
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
# [docs] "Token limits": the most tokens one training example may hold, per base model, and the
# encoding that model counts with.
MODELS = {
    "gpt-4.1-2025-04-14": (65_536, "o200k_base"),
    "gpt-4.1-mini-2025-04-14": (65_536, "o200k_base"),
    "gpt-4.1-nano-2025-04-14": (65_536, "o200k_base"),
    "gpt-4o-2024-08-06": (65_536, "o200k_base"),
    "gpt-4o-mini-2024-07-18": (65_536, "o200k_base"),
    "gpt-4-0613": (8_192, "cl100k_base"),
    "gpt-3.5-turbo-0125": (16_385, "cl100k_base"),
    "gpt-3.5-turbo-1106": (16_385, "cl100k_base"),
    "gpt-3.5-turbo-0613": (4_096, "cl100k_base"),
}
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"

# rule -> what it means, for the report; errors make OpenAI refuse the file, warnings do not.
ERRORS = {
    "too_few_examples": f"fewer than {MIN_EXAMPLES} examples [docs]",
    "data_type": "a line that is not a UTF-8 JSON object [cookbook]",
    "missing_messages_list": "no non-empty `messages` list [cookbook]",
    "message_missing_key": "a message without `role` or `content` [cookbook]",
    "message_unrecognized_key": "a message key OpenAI does not accept for its role [cookbook]",
    "unrecognized_role": f"a role other than {', '.join(sorted(ROLES))} [cookbook]",
    "missing_content": "a message whose content is not a non-empty string [cookbook]",
    "example_missing_assistant_message": "no assistant message to learn [cookbook]",
    "system_not_first": "a system message after the first message [docs: the system message opens the "
    "conversation]",
    "bad_weight": "an assistant `weight` other than the integer 0 or 1 [docs]",
    "bad_name": "a `name` that is not a string [docs]",
    "tool_message_without_call": "a tool message without a `tool_call_id` answering an earlier assistant "
    "`tool_calls` [docs: function calling examples]",
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
    limit: int = MODELS[DEFAULT_MODEL][0]
    encoding: str = MODELS[DEFAULT_MODEL][1]
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
            "encoding": self.encoding,
            "token_limit": self.limit,
            "examples": self.examples,
            "tokens_total": self.tokens_total,
            "tokens_max": self.tokens_max,
            "errors": dict(self.errors),
            "warnings": dict(self.warnings),
            "lines": self.lines,
        }


@cache
def _encoding(name: str) -> Any:
    try:
        import bpe_openai
    except ImportError as exc:  # a core dependency: only a broken install lacks it
        raise SetupError("counting OpenAI tokens needs bpe-openai: pip install 'bpe-openai==0.1.4'") from exc
    return bpe_openai.get_encoding(name)


CHUNK = 100_000  # characters encoded at a time (the encoder refuses inputs of a million characters)


def _tokens(text: str, encoding: Any) -> int:
    """Tokens of one text; special-token strings such as <|endoftext|> count as the plain text they are.
    A text longer than CHUNK characters is counted in pieces (at most one token off per piece)."""
    return sum(len(encoding.encode_ordinary(text[k : k + CHUNK])) for k in range(0, len(text), CHUNK))


def _texts(value: Any) -> list[str]:
    """The strings a value holds: itself, the text of content parts, the JSON of tool calls."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | dict):
        return [json.dumps(value, ensure_ascii=False)] if value else []
    return []


def count_tokens(messages: list[dict[str, Any]], encoding_name: str = "o200k_base") -> int:
    """[cookbook] num_tokens_from_messages: 3 per message, each value's tokens, 1 per name, 3 to prime
    (content parts and tool calls are counted as their JSON text, a slight over-count)."""
    encoding = _encoding(encoding_name)
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += sum(_tokens(text, encoding) for text in _texts(value))
            if key == "name":
                total += 1
    return total


def _has_content(content: Any) -> bool:
    """A non-empty string, or a list of content parts with some non-empty text (or an image)."""
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list) and content:
        return all(
            isinstance(part, dict)
            and (
                part.get("type") == "image_url"
                or (isinstance(part.get("text"), str) and part["text"].strip())
            )
            for part in content
        )
    return False


def _message_rules(message: Any, position: int) -> list[str]:
    if not isinstance(message, dict):
        return ["message_missing_key"]
    found = []
    role = message.get("role")
    if "role" not in message or ("content" not in message and not message.get("tool_calls")):
        found.append("message_missing_key")
    if not isinstance(role, str) or role not in ROLES:
        found.append("unrecognized_role")
    elif set(message) - KEYS[role]:
        found.append("message_unrecognized_key")
    content = message.get("content")
    tool_call = role == "assistant" and message.get("tool_calls") and content is None
    if not tool_call and not _has_content(content):
        found.append("missing_content")
    if role == "system" and position > 0:
        found.append("system_not_first")
    weight = message.get("weight", 0)
    if role == "assistant" and (type(weight) is not int or weight not in (0, 1)):  # not True, not 1.0
        found.append("bad_weight")
    if "name" in message and not isinstance(message["name"], str):
        found.append("bad_name")
    return found


def _unanswered_tools(messages: list[Any]) -> bool:
    """A tool message must answer a call: carry a tool_call_id that an earlier assistant message's
    tool_calls announced."""
    called: set[Any] = set()
    for message in messages:
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                called.add(call["id"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return True
    return False


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
    if _unanswered_tools(messages):
        broken.add("tool_message_without_call")
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        broken.add("example_missing_assistant_message")
    elif roles[-1] != "assistant":
        broken.add("ends_without_assistant")
    for rule in sorted(broken):
        report.note(rule, line)
    if all(isinstance(m, dict) for m in messages):
        tokens = count_tokens(messages, report.encoding)
        report.tokens_total += tokens
        report.tokens_max = max(report.tokens_max, tokens)
        if tokens > report.limit:
            report.note("over_token_limit", line)


def check_file(path: Path, model: str = DEFAULT_MODEL, training: bool = True) -> Report:
    """Check a chat fine-tuning JSONL file against OpenAI's rules for `model` (the minimum number of
    examples applies to a training file, not to a validation file)."""
    if model not in MODELS:
        raise ConfigError(
            f"unknown OpenAI model '{model}' for the token limit: choose one of {', '.join(MODELS)}"
        )
    report = Report(model=model, limit=MODELS[model][0], encoding=MODELS[model][1])
    with path.open("rb") as lines:  # JSONL lines end at \n only (a bare \r is not a line break)
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                example = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's depth
                report.examples += 1
                report.note("data_type", number)
                continue
            check_example(example, number, report)
    if training and report.examples < MIN_EXAMPLES:
        report.note("too_few_examples", 0)
    return report
