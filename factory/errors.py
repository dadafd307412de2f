"""Errors: one root for every error a user can act on, and error texts safe to show.

`FactoryError` is the root. Every error the factory raises on purpose derives from
it and says what to do; the CLI prints those as one line, and anything else is a bug
that shows its traceback with `--debug`. Each part of the system defines the errors
it raises next to its code (`store.lake.LakeError`, `formats.readers.ReadError`, ...),
on these roots; `ConfigError` (a setting that cannot work) and `InputError` (data or a
file that cannot be read) serve everywhere.

Secrets never leave the process inside an error text. An endpoint may echo what it
was sent: a 401 body quoting `Bearer sk-...` once went into jobs.error,
llm_calls.error and the terminal. Every error text is passed through `scrub` before
it is stored, logged or printed: it removes the values of the environment variables
that hold secrets (names with KEY, TOKEN, SECRET, PASSWORD or CREDENTIAL, such as
OPENAI_API_KEY), any extra secret the caller names, and anything shaped like an API
key or a bearer token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable


class FactoryError(Exception):
    """The root of every error the factory raises on purpose; the message says what to do."""


class ConfigError(FactoryError, ValueError):
    """A setting (a flag, a config key, a plugin option) that cannot work as given."""


class InputError(FactoryError, ValueError):
    """Data, a file or a model the factory was pointed at that it cannot use."""


class SetupError(FactoryError, RuntimeError):
    """This machine lacks what a setting needs: a package, an extension, a GPU."""


class NotFound(FactoryError, LookupError):
    """A run, a row or another named thing that is not in the warehouse."""


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, scrubbed of secrets: what jobs and runs record."""
    return scrub(f"{type(exc).__name__}: {exc}") or type(exc).__name__


REDACTED = "[redacted]"
MIN_SECRET = 8  # shorter environment values are not treated as secrets (they would match everywhere)
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)

# Shapes of credentials, whoever configured them: the value is replaced, a label before it is kept.
_SHAPES = [
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{8,}"),
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),
]
_LABELLED = re.compile(
    r"(?i)((?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password|authorization|x-api-key)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;}]{6,})"
)


def environment_secrets() -> list[str]:
    """Values of the environment variables whose names say they hold a secret."""
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= MIN_SECRET]


def scrub(text: str | None, extra: Iterable[str | None] = ()) -> str | None:
    """`text` with every secret replaced by [redacted] (None stays None)."""
    if not text:
        return text
    for secret in sorted(
        {*environment_secrets(), *(s for s in extra if s and len(s) >= MIN_SECRET)}, key=len
    )[::-1]:
        text = text.replace(secret, REDACTED)
    for shape in _SHAPES:
        text = shape.sub(lambda m: (m.group(1) + " " if m.lastindex else "") + REDACTED, text)
    return _LABELLED.sub(lambda m: m.group(1) + REDACTED, text)
