"""PII redaction: a row holding personal data is replaced by a redacted copy with lineage.

Emails, phone numbers, IP addresses, credit-card numbers, IBANs (mod-97-checked) and
API-key shapes are looked for in every text of the batch. A row with any of them gets
a verdict `pii_redacted email 1, phone 2 -> <new id>` and a new row, the same record
with each finding replaced by a placeholder (`[EMAIL]`, ...), whose `parent_ids` names
the original; with `action: drop` the row is only dropped.

- Phone numbers are found by `phonenumbers` (Google's libphonenumber metadata) at
  leniency VALID: a number must be a valid number of its country, which is what keeps
  years, scores, dates, ISBNs, version strings, ZIP codes and table counts out (POSSIBLE
  takes any 4-12 digit run for a UK number). A number written with `+` is parsed for
  any country; national spellings only for `phone_regions` (US and GB by default).
- A card number needs a real issuer prefix with that issuer's length, the Luhn check,
  and either no separators or one separator character throughout in the usual grouping
  (4-4-4-4, 4-4-4-4-3; Amex 4-6-5; Diners 4-6-4).
- Addresses at RFC 2606's reserved domains (example.com, .test, ...) are examples, not
  personal data, and stay.

Only the distinct texts that a polars regex marks as candidates (a run of digits, an @,
...) reach Python, where each finding is located with its exact span; the redacted text
and the count per distinct text are then mapped back onto the batch by polars.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Literal

import phonenumbers
import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin, FilterResult
from factory.store.warehouse import ids_of

KINDS: dict[
    str, tuple[str, str]
] = {  # kind -> (candidate pattern, placeholder), in the order kinds claim text
    "email": (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "[EMAIL]"),
    "api_key": (
        r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|xox[abpors]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})",
        "[API_KEY]",
    ),
    "iban": (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", "[IBAN]"),
    # a maximal run of digit groups joined by single spaces or hyphens; the card is looked for inside it
    "credit_card": (r"\d(?:[ -]?\d){12}", "[CREDIT_CARD]"),
    "ip_address": (
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
        r"|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b",
        "[IP_ADDRESS]",
    ),
    # a run of min_phone_digits digits with a little punctuation between (filled in per config)
    "phone": (r"\d(?:[^\p{L}\d]{0,4}\d){%d,}", "[PHONE]"),
}
CARD_RUN = re.compile(r"(?<!\w)\d+(?:[ -]\d+)*(?!\w)")
FIELDS = ["system", "instruction", "input", "output", "rejected", "meta"]  # meta: the import's extra fields
RESERVED_DOMAINS = ["example.com", "example.org", "example.net", "example", "test", "invalid", "localhost"]
Kind = Literal["email", "api_key", "iban", "credit_card", "ip_address", "phone"]

# issuer -> (prefix ranges, lengths); prefixes as in ISO/IEC 7812 issuer tables
ISSUERS: dict[str, tuple[list[tuple[int, int]], set[int]]] = {
    "visa": ([(4, 4)], {13, 16, 19}),
    "mastercard": ([(51, 55), (2221, 2720)], {16}),
    "amex": ([(34, 34), (37, 37)], {15}),
    "discover": ([(6011, 6011), (644, 649), (65, 65)], {16, 17, 18, 19}),
    "jcb": ([(3528, 3589)], {16, 17, 18, 19}),
    "diners": ([(300, 305), (36, 36), (38, 38)], {14, 16}),
    "unionpay": ([(62, 62)], {16, 17, 18, 19}),
}
# the printed grouping by length; other lengths count only when written without separators
GROUPINGS = {14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4), 19: (4, 4, 4, 4, 3)}


class PiiConfig(BaseModel):
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), description="what to look for")
    action: Literal["redact", "drop"] = Field(
        "redact", description="redact: write a redacted copy with lineage; drop: only drop the row"
    )
    min_phone_digits: int = Field(9, ge=6, description="fewer digits than this is not a phone number")
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB"],
        description="regions (ISO 3166 codes) whose national spellings, without +, are phone numbers; "
        "numbers written with + are found for every country",
    )
    allow_domains: list[str] = Field(
        default_factory=lambda: list(RESERVED_DOMAINS),
        description="email domains that are never personal (RFC 2606's reserved example domains)",
    )
    scan_meta: bool = Field(
        True,
        description="also search meta (the import's extra fields); personal data only there drops the row, "
        "since meta is outside the row id and a redacted copy could not replace it",
    )


def luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for k, d in enumerate(reversed(digits)):
        total += d if k % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
    return total % 10 == 0


def issuer(digits: str) -> str | None:
    """The card issuer whose prefix and length the digits have, if any."""
    for name, (ranges, lengths) in ISSUERS.items():
        if len(digits) in lengths and any(
            lo <= int(digits[: len(str(lo))]) <= hi for lo, hi in ranges if len(digits) >= len(str(lo))
        ):
            return name
    return None


def is_card(groups: list[str]) -> bool:
    """Digit groups (one group: no separators) that make a card number: issuer, length, Luhn, grouping."""
    digits = "".join(groups)
    grouped = len(groups) == 1 or tuple(map(len, groups)) == GROUPINGS.get(len(digits))
    return grouped and issuer(digits) is not None and luhn(digits)


def card_spans(text: str) -> Iterator[tuple[int, int]]:
    """Card numbers in a text: within each run of digit groups, the leftmost longest card."""
    for run in CARD_RUN.finditer(text):
        parts = re.split(r"([ -])", run.group())
        groups, seps = parts[0::2], parts[1::2]
        starts = [run.start()]
        for g, s in zip(groups, seps, strict=False):
            starts.append(starts[-1] + len(g) + len(s))
        i = 0
        while i < len(groups):
            for j in range(min(len(groups), i + 5), i, -1):  # at most 5 groups (4-4-4-4-3)
                if len(set(seps[i : j - 1])) <= 1 and is_card(groups[i:j]):
                    yield starts[i], starts[j - 1] + len(groups[j - 1])
                    i = j - 1
                    break
            i += 1


def iban_valid(text: str) -> bool:
    code = text.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


PHONE_RUN = r"\d(?:[\W_]{0,4}\d){%d,}"  # KINDS["phone"]'s candidate in Python's re
PHONE_CONTEXT = 24  # characters each side of a candidate run that the matcher sees


def phone_spans(text: str, config: PiiConfig) -> Iterator[tuple[int, int]]:
    """Valid phone numbers: national spellings of `phone_regions`, any country's with +.

    The matcher reads only a window around each run of enough digits, so the years and counts
    elsewhere in a long text cost nothing; windows are cached, as the same ones recur across rows.
    """
    windows: list[list[int]] = []
    for run in re.finditer(PHONE_RUN % (config.min_phone_digits - 1), text):
        a, b = max(0, run.start() - PHONE_CONTEXT), run.end() + PHONE_CONTEXT
        if windows and a <= windows[-1][1]:
            windows[-1][1] = b
        else:
            windows.append([a, b])
    regions = tuple(r.upper() for r in config.phone_regions) or ("ZZ",)  # ZZ: only numbers with +
    spans = sorted(
        (a + s, a + e) for a, b in windows for s, e in _phones_in(text[a:b], regions, config.min_phone_digits)
    )
    end = 0
    for s, e in sorted(spans, key=lambda span: (span[0], -span[1])):  # leftmost longest, no overlaps
        if s >= end:
            yield s, e
            end = e


@lru_cache(maxsize=65536)
def _phones_in(window: str, regions: tuple[str, ...], min_digits: int) -> frozenset[tuple[int, int]]:
    return frozenset(
        (m.start, m.end)
        for region in regions
        for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID)
        if sum(c.isdigit() for c in m.raw_string) >= min_digits
    )


def _regex_spans(kind: str, config: PiiConfig) -> Callable[[str], Iterator[tuple[int, int]]]:
    pattern = re.compile(KINDS[kind][0])
    allowed = [d.lower() for d in config.allow_domains]

    @lru_cache(maxsize=4096)
    def check(match: str) -> bool:
        if kind == "iban":
            return iban_valid(match)
        if kind == "email":
            domain = match.rsplit("@", 1)[1].lower()
            return not any(domain == d or domain.endswith("." + d) for d in allowed)
        return True

    return lambda text: (m.span() for m in pattern.finditer(text) if check(m.group()))


def _spans(kind: str, config: PiiConfig) -> Callable[[str], Iterator[tuple[int, int]]]:
    if kind == "phone":
        return lambda text: phone_spans(text, config)
    if kind == "credit_card":
        return card_spans
    return _regex_spans(kind, config)


def _candidate(kind: str, config: PiiConfig) -> str:
    pattern = KINDS[kind][0]
    return pattern % (config.min_phone_digits - 1) if kind == "phone" else pattern


def _strings(frame: pl.DataFrame) -> pl.Series:
    """Every text of the batch: the text fields and each conversation turn."""
    columns = [frame[f].cast(pl.String) for f in FIELDS if f in frame.columns]
    if "messages" in frame.columns:
        columns.append(frame["messages"].explode().struct.field("content"))
    return pl.concat(columns).drop_nulls()


Finding = tuple[str, dict[str, str], dict[str, int]]  # kind, text -> redacted text, text -> count


def findings(frame: pl.DataFrame, config: PiiConfig) -> list[Finding]:
    """Per kind, in the order kinds claim text: each distinct text holding some, redacted, and how many."""
    texts = _strings(frame).unique()
    found = []
    for kind in sorted(config.kinds, key=list(KINDS).index):  # earlier kinds claim text first
        spans_of = _spans(kind, config)
        placeholder = KINDS[kind][1]
        redacted, counts = {}, {}
        for text in texts.filter(texts.str.contains(_candidate(kind, config))).unique().to_list():
            spans = list(spans_of(text))
            if spans:
                pieces, end = [], 0
                for s, e in spans:
                    pieces += [text[end:s], placeholder]
                    end = e
                redacted[text] = "".join(pieces) + text[end:]
                counts[text] = len(spans)
        if redacted:
            found.append((kind, redacted, counts))
            texts = texts.replace(redacted)
    return found


def _redact(expr: pl.Expr, redacted: dict[str, str]) -> pl.Expr:
    return expr.replace(redacted)


def _redact_all(expr: pl.Expr, found: list[Finding]) -> pl.Expr:
    for _, redacted, _ in found:
        expr = _redact(expr, redacted)
    return expr


def _count(expr: pl.Expr, counts: dict[str, int]) -> pl.Expr:
    return expr.replace_strict(counts, default=0, return_dtype=pl.UInt32).fill_null(0)


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: PiiConfig, ctx: FilterContext | None = None
) -> FilterResult:
    """Keep rows without PII; drop the others, with a redacted copy as a new row unless `action` is drop."""
    scanned = candidates if config.scan_meta else candidates.drop("meta", strict=False)
    found = findings(scanned, config)
    fields = [f for f in FIELDS if f in scanned.columns]
    turns = "messages" in candidates.columns
    texts = candidates.select(*(pl.col(f).cast(pl.String) for f in fields), *(["messages"] if turns else []))
    contents = pl.col("messages").list.eval(pl.element().struct.field("content"))
    if turns:
        texts = texts.with_columns(contents)
    counts = []
    for kind, redacted, per_text in found:  # count on text redacted by the kinds before, as the copy is made
        per_turn = pl.col("messages").list.eval(_count(pl.element(), per_text)).list.sum().fill_null(0)
        # a conversation's instruction and output are its last turns: counted once, in messages
        in_turns = pl.col("messages").is_not_null() if turns else pl.lit(False)
        field_counts = [
            pl.when(in_turns & pl.lit(f in ("instruction", "output")))
            .then(0)
            .otherwise(_count(pl.col(f), per_text))
            for f in fields
        ]
        n = texts.select(pl.sum_horizontal(*field_counts, *([per_turn] if turns else []))).to_series()
        counts.append(pl.when(n > 0).then(pl.format(f"{kind} {{}}", n)))
        texts = texts.with_columns(
            *(_redact(pl.col(f), redacted) for f in fields),
            *([pl.col("messages").list.eval(_redact(pl.element(), redacted))] if turns else []),
        )
    detail = pl.concat_str(counts, separator=", ", ignore_nulls=True) if counts else pl.lit(None, pl.String)
    judged = candidates.select("id", texts.with_columns(detail.alias("detail"))["detail"])
    judged = judged.with_columns(pl.when(pl.col("detail") != "").then(pl.col("detail")).alias("detail"))
    has_pii = judged["detail"].is_not_null()
    if config.action == "drop" or not has_pii.any():
        return FilterResult(
            judged.select(
                "id",
                pl.col("detail").is_null().alias("keep"),
                pl.when(pl.col("detail").is_null())
                .then(pl.lit("no_pii"))
                .otherwise("pii " + pl.col("detail"))
                .alias("reason"),
            )
        )
    originals = candidates.filter(has_pii)
    redacted = originals.with_columns(
        *(_redact_all(pl.col(f).cast(pl.String), found) for f in FIELDS if f in originals.columns),
        pl.col("messages").list.eval(
            pl.struct(
                pl.element().struct.field("role"),
                _redact_all(pl.element().struct.field("content"), found).alias("content"),
            )
        ),
        pl.concat_list(pl.col("id")).alias("parent_ids"),
        pl.lit("pii_redact").alias("generator"),
        pl.struct(judged.filter(has_pii)["detail"].alias("redacted"))
        .struct.json_encode()
        .alias("generator_params"),
    ).drop("id", "job_id", "created_at", "_row", strict=False)
    if "meta" in redacted.columns:
        redacted = redacted.with_columns(_still_json(redacted["meta"]))
    new_ids = ids_of(redacted)
    reasons = pl.DataFrame({"id": originals["id"], "_new": new_ids})
    verdicts = judged.join(reasons, on="id", how="left").select(
        "id",
        pl.col("detail").is_null().alias("keep"),
        pl.when(pl.col("detail").is_null())
        .then(pl.lit("no_pii"))
        .when(pl.col("id") == pl.col("_new"))  # only meta held it: the copy would be the row itself
        .then(
            pl.format(
                "pii_in_meta {}: meta is outside the row id, so no redacted copy can replace the row; "
                "leave the field out at import or set scan_meta=false",
                pl.col("detail"),
            )
        )
        .otherwise(pl.format("pii_redacted {} -> {}", pl.col("detail"), pl.col("_new")))
        .alias("reason"),
    )
    copies = redacted.filter((new_ids != originals["id"]).fill_null(True))
    return FilterResult(verdicts, copies if copies.height else None)


def _still_json(meta: pl.Series) -> pl.Series:
    """Redacted meta that stays a JSON object: a number replaced by a placeholder (a card number
    stored as a JSON number) leaves invalid JSON, which is kept as one string instead."""

    def fix(text: str | None) -> str | None:
        if text is None:
            return None
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return json.dumps({"redacted_meta": text}, ensure_ascii=False)
        return text

    return pl.Series("meta", [fix(t) for t in meta.to_list()], dtype=pl.String)


plugin = FilterPlugin(
    name="pii",
    config=PiiConfig,
    run=run,
    summary="safety: redact emails, phones (libphonenumber), IPs, issuer+Luhn-checked cards, IBANs, API keys "
    "into new rows with lineage",
    row_local=True,
)
