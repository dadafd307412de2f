"""Jinja for templates a stranger wrote: no code, no internals, bounded size and time.

Import task files (FLAN-style templates) are data that someone else may have written,
so they render in Jinja's `ImmutableSandboxedEnvironment`: a template reads its record's
fields and calls safe filters, but reaches no Python internals
(`{{ cycler.__init__.__globals__.os.popen('id').read() }}` fails) and changes nothing.
On top of Jinja's sandbox, which caps only `range()`, this one bounds what a template can
build and how long it may run:

- no value over MAX_VALUE characters from repetition (`'a' * 10**9`), powers, padding and
  widths (`'%1000000000s' % x`, `'{:>1000000000}'.format(x)`, `x.ljust(...)`,
  `center`, `indent`), `replace`, `join` or `expandtabs`; each is checked before it runs;
- no `namespace()` (nothing accumulates across loop iterations) and no `lipsum()`;
- the output stops at MAX_VALUE characters, and each render stops after TIME_LIMIT_S
  seconds (on the main thread, where Python delivers the timer's signal).

A template that hits a limit raises `TemplateLimit`, which import reports as that record's
`template_error`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.filters import do_center, do_indent, do_join, do_replace
from jinja2.sandbox import ImmutableSandboxedEnvironment

from factory.errors import FactoryError

MAX_VALUE = 1 << 20  # characters
TIME_LIMIT_S = 2.0
_WIDTHS = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_NESTED_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")


class TemplateLimit(FactoryError, SecurityError):
    """A template tried to build a value, or run for a time, past the limits."""


def _too_big(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise TemplateLimit(f"{what} would build a value of {size:,} characters (limit {MAX_VALUE:,})")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else len(str(value))


def _percent(text: str, args: Any) -> None:
    """`text % args`: refuse widths and precisions past the limit (written or taken from args)."""
    values = list(args) if isinstance(args, tuple) else [args]
    for width, precision in _WIDTHS.findall(text):
        for number in (width, precision):
            if number.isdigit():
                _too_big(int(number), "a %-format width")
    if "*" in text:
        for value in values:
            if isinstance(value, int):
                _too_big(abs(value), "a %-format width")


def _str_format(text: str) -> None:
    if _NESTED_SPEC.search(text):
        raise TemplateLimit("a format width taken from an argument is not allowed in a template")
    for spec in _FORMAT_SPEC.findall(text):
        for number in re.findall(r"\d+", spec):
            _too_big(int(number), "a format width")


def _estimate_replace(text: str, old: str, new: str, count: int | None) -> int:
    times = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        times = min(times, count)
    return len(text) + times * (len(new) - len(old))


def _center(value: Any, width: int = 80) -> str:
    _too_big(int(width), "center()")
    return do_center(value, width)


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(value)
    pad = len(width) if isinstance(width, str) else int(width)
    _too_big(len(text) + (text.count("\n") + 1) * pad, "indent()")
    return do_indent(text, width, first, blank)


def _replace(eval_ctx: Any, value: Any, old: str, new: str, count: int | None = None) -> str:
    _too_big(_estimate_replace(str(value), str(old), str(new), count), "replace()")
    return do_replace(eval_ctx, value, old, new, count)


def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    _too_big(sum(_length(x) for x in items) + len(d) * max(len(items) - 1, 0), "join()")
    return do_join(eval_ctx, items, d, attribute)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _percent(value, kwargs or args)
    return value % (kwargs or args)


_replace.jinja_pass_arg = do_replace.jinja_pass_arg  # type: ignore[attr-defined]
_join.jinja_pass_arg = do_join.jinja_pass_arg  # type: ignore[attr-defined]


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with bounds on size (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name in ("namespace", "lipsum"):
            self.globals.pop(name, None)
        self.filters.update(center=_center, indent=_indent, replace=_replace, join=_join, format=_format)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise TemplateLimit(f"exponent {right} is too large in a template")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _too_big(len(seq) * times, "repetition")
        if operator == "%" and isinstance(left, str):
            _percent(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in ("ljust", "rjust", "center", "zfill") and args:
                _too_big(int(args[0]), f"{name}()")
            elif name == "expandtabs":
                _too_big(len(owner) * int(args[0] if args else kwargs.get("tabsize", 8)), "expandtabs()")
            elif name == "replace" and len(args) >= 2:
                count = args[2] if len(args) > 2 else kwargs.get("count")
                _too_big(_estimate_replace(owner, str(args[0]), str(args[1]), count), "replace()")
            elif name == "join" and args:
                items = list(args[0])
                _too_big(sum(_length(x) for x in items) + len(owner) * max(len(items) - 1, 0), "join()")
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _str_format(value.__self__)
        return wrapped


def environment() -> Sandbox:
    """The environment every Jinja use in the factory renders in."""
    return Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only: no timer elsewhere
        return

    def stop(signum: int, frame: Any) -> None:
        raise TemplateLimit(f"the template ran for more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render(template: jinja2.Template, values: dict[str, Any]) -> str:
    """Render with the size and time limits: the output is collected piece by piece."""
    with _time_limit(TIME_LIMIT_S):
        pieces, size = [], 0
        for piece in template.generate(values):
            size += len(piece)
            _too_big(size, "the template's output")
            pieces.append(piece)
    return "".join(pieces)
