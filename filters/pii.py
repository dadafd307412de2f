"""PII redaction: a row holding personal data is replaced by a redacted copy with lineage.

Emails, phone numbers, IP addresses, credit-card numbers (Luhn-checked), IBANs
(mod-97-checked) and API-key shapes are found by regular expressions over the
whole batch. A row with any of them gets a verdict `pii_redacted email 1, phone 2
-> <new id>` and a new row, the same record with each finding replaced by a
placeholder (`[EMAIL]`, ...), whose `parent_ids` names the original; with
`action: drop` the row is only dropped. Addresses at RFC 2606's reserved
domains (example.com, .test, ...) are examples, not personal data, and stay. Checksums are computed only for the
distinct matches, not per row, so the cost stays in polars.
"""

from __future__ import annotations

import re
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin, FilterResult
from factory.store.warehouse import ids_of

KINDS: dict[str, tuple[str, str]] = {  # kind -> (pattern, placeholder)
    "email": (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "[EMAIL]"),
    "api_key": (
        r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|xox[abpors]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})",
        "[API_KEY]",
    ),
    "iban": (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", "[IBAN]"),
    "credit_card": (r"\b\d(?:[ -]?\d){12,18}\b", "[CREDIT_CARD]"),
    "ip_address": (
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
        r"|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b",
        "[IP_ADDRESS]",
    ),
    "phone": (r"(?:\+\d{1,3}[ .-]?|\b)(?:\(\d{1,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}\b", "[PHONE]"),
}
FIELDS = ["system", "instruction", "input", "output", "rejected"]
RESERVED_DOMAINS = ["example.com", "example.org", "example.net", "example", "test", "invalid", "localhost"]
Kind = Literal["email", "api_key", "iban", "credit_card", "ip_address", "phone"]


class PiiConfig(BaseModel):
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), description="what to look for")
    action: Literal["redact", "drop"] = Field(
        "redact", description="redact: write a redacted copy with lineage; drop: only drop the row"
    )
    min_phone_digits: int = Field(9, ge=6, description="fewer digits than this is not a phone number")
    allow_domains: list[str] = Field(
        default_factory=lambda: list(RESERVED_DOMAINS),
        description="email domains that are never personal (RFC 2606's reserved example domains)",
    )


def luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for k, d in enumerate(reversed(digits)):
        total += d if k % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    code = text.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _valid(kind: str, match: str, config: PiiConfig) -> bool:
    if kind == "credit_card":
        return luhn(match)
    if kind == "iban":
        return iban_valid(match)
    if kind == "email":
        domain = match.rsplit("@", 1)[1].lower()
        return not any(domain == d or domain.endswith("." + d) for d in config.allow_domains)
    if kind == "phone":  # 4-4-4 digit groups are a card number's layout, not a phone's
        groups = re.findall(r"\d+", match)
        card_like = len(groups) >= 3 and all(len(g) == 4 for g in groups)
        return sum(map(len, groups)) >= config.min_phone_digits and not card_like
    return True


def _texts(frame: pl.DataFrame) -> pl.DataFrame:
    """Every text field of the batch, one column each (conversation turns joined)."""
    columns = [pl.col(f).fill_null("") for f in FIELDS]
    turns = pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\x1e").fill_null("")
    return frame.select(*columns, turns.alias("messages"))


def findings(frame: pl.DataFrame, config: PiiConfig) -> list[tuple[str, dict[str, str]]]:
    """Per kind, in the order kinds claim text, the distinct valid matches mapped to their placeholder."""
    texts = _texts(frame)
    everything = pl.concat([texts[c] for c in texts.columns])
    found = []
    for kind in sorted(config.kinds, key=list(KINDS).index):  # earlier kinds claim text first
        pattern, placeholder = KINDS[kind]
        matches = everything.str.extract_all(pattern).explode().drop_nulls().unique().to_list()
        valid = {m: placeholder for m in matches if _valid(kind, m, config)}
        if valid:
            found.append((kind, valid))
            everything = everything.str.replace_many(list(valid), list(valid.values()))
    return found


def _redact(expr: pl.Expr, valid: dict[str, str]) -> pl.Expr:
    return expr.str.replace_many(list(valid), list(valid.values()))


def _redact_all(expr: pl.Expr, found: list[tuple[str, dict[str, str]]]) -> pl.Expr:
    for _, valid in found:
        expr = _redact(expr, valid)
    return expr


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: PiiConfig, ctx: FilterContext | None = None
) -> FilterResult:
    """Keep rows without PII; drop the others, with a redacted copy as a new row unless `action` is drop."""
    found = findings(candidates, config)
    texts = _texts(candidates)
    counts = []
    for kind, valid in found:  # count on text redacted by the kinds before, as the copy is made
        pattern = "|".join(re.escape(m) for m in sorted(valid, key=len, reverse=True))
        n = texts.select(pl.sum_horizontal(pl.all().str.count_matches(pattern))).to_series()
        counts.append(pl.when(n > 0).then(pl.format(f"{kind} {{}}", n)))
        texts = texts.select(_redact(pl.all(), valid))
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
        *(_redact_all(pl.col(f).cast(pl.String), found) for f in FIELDS),
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
    new_ids = ids_of(redacted)
    reasons = pl.DataFrame({"id": originals["id"], "_new": new_ids})
    verdicts = judged.join(reasons, on="id", how="left").select(
        "id",
        pl.col("detail").is_null().alias("keep"),
        pl.when(pl.col("detail").is_null())
        .then(pl.lit("no_pii"))
        .otherwise(pl.format("pii_redacted {} -> {}", pl.col("detail"), pl.col("_new")))
        .alias("reason"),
    )
    return FilterResult(verdicts, redacted)


plugin = FilterPlugin(
    name="pii",
    config=PiiConfig,
    run=run,
    summary="safety: redact emails, phones, IPs, Luhn-valid cards, IBANs, API keys into new rows with lineage",
    row_local=True,
)
