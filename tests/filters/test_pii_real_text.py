"""The pii filter on realistic text, through a real warehouse: numbers that are not personal data
(years, scores, tables, ISBNs, dates, versions, order numbers, ZIP codes, math, long numbers failing
the card checks) stay; phone numbers and card numbers in their usual spellings are all found, and the
redacted copy replaces exactly their spans.

The data lives in tests/data/realistic/: numbers_not_pii.jsonl (alpaca rows, no personal data) and
pii_spellings.jsonl (alpaca rows plus `expect`: the findings each must produce, field, kind and text).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import factory
from factory.runners.filtering import run_filter
from filters import pii
from tests.conftest import write_jsonl

DATA = Path(__file__).parents[1] / "data" / "realistic"
FIELDS = ["instruction", "input", "output"]
KIND_OF = {placeholder: kind for kind, (_, placeholder) in pii.KINDS.items()}
SPLIT = re.compile("(" + "|".join(re.escape(p) for p in KIND_OF) + ")")


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


def found_in(original: str, redacted: str) -> list[tuple[str, str]]:
    """(kind, text) of each span the redacted copy replaced; asserts nothing else changed."""
    parts = SPLIT.split(redacted)
    pattern = "".join(f"(?P<g{i}>.+?)" if p in KIND_OF else re.escape(p) for i, p in enumerate(parts))
    match = re.fullmatch(pattern, original, re.S)
    assert match, f"the redacted copy changed text outside its placeholders:\n{original!r}\n{redacted!r}"
    return [(KIND_OF[p], match[f"g{i}"]) for i, p in enumerate(parts) if p in KIND_OF]


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Both files imported into one warehouse and run through `pii` with its defaults."""
    tmp = tmp_path_factory.mktemp("pii_real")
    clean, spelled = load("numbers_not_pii.jsonl"), load("pii_spellings.jsonl")
    records = clean + [{f: r[f] for f in FIELDS} for r in spelled]
    wh = factory.init(tmp / "wh")
    try:
        factory.import_file(wh, str(write_jsonl(tmp / "rows.jsonl", records)))
        summary = run_filter(wh, "pii")
        originals = wh.sql(
            "SELECT r.id, r.instruction, r.input, r.output, v.keep, v.reason "
            "FROM rows r JOIN verdicts v USING (id) WHERE r.generator <> 'pii_redact'"
        )
        copies = wh.sql("SELECT id, instruction, input, output FROM rows WHERE generator = 'pii_redact'")
    finally:
        wh.close()
    by_text = {tuple(r[f] or "" for f in FIELDS): r for r in originals.iter_rows(named=True)}
    copies = {r["id"]: r for r in copies.iter_rows(named=True)}
    # the verdict names the redacted copy (identical copies of different rows are one row)
    copy_of = {r["id"]: copies[r["reason"].rsplit(" -> ", 1)[1]] for r in by_text.values() if not r["keep"]}
    return clean, spelled, by_text, copy_of, summary


def test_numbers_that_are_not_pii_stay(judged):
    clean, _, by_text, copy_of, _ = judged
    flagged = []
    for record in clean:
        row = by_text[tuple(record[f] for f in FIELDS)]
        if not row["keep"]:
            flagged.append((row["reason"], {f: record[f] for f in FIELDS if f in copy_of.get(row["id"], {})}))
    assert flagged == [], f"false positives: {flagged}"
    assert len(clean) >= 100


def test_precision_and_recall_on_real_spellings(judged):
    clean, spelled, by_text, copy_of, summary = judged
    tp, fp, fn = Counter(), Counter(), Counter()
    misses = []
    for record in clean + spelled:
        row = by_text[tuple(record[f] for f in FIELDS)]
        copy = copy_of.get(row["id"])
        for field in FIELDS:
            expected = Counter(
                (e["kind"], e["text"]) for e in record.get("expect", []) if e["field"] == field
            )
            actual = Counter(found_in(record[field], copy[field]) if copy else [])
            for counter, found in ((tp, expected & actual), (fp, actual - expected), (fn, expected - actual)):
                counter.update(kind for kind, _ in found.elements())
            if expected != actual:
                misses.append((field, record[field], dict(expected - actual), dict(actual - expected)))
    precision = sum(tp.values()) / max(1, sum(tp.values()) + sum(fp.values()))
    recall = sum(tp.values()) / max(1, sum(tp.values()) + sum(fn.values()))
    print(
        f"\npii on tests/data/realistic ({len(clean)} rows without PII, {len(spelled)} with): "
        f"precision {precision:.3f}, recall {recall:.3f}; true positives {dict(tp)}, "
        f"false positives {dict(fp)}, misses {dict(fn)}"
    )
    for kind in sorted(set(tp) | set(fn)):
        print(f"  {kind}: recall {tp[kind]}/{tp[kind] + fn[kind]}")
    assert not misses, misses
    assert (precision, recall) == (1.0, 1.0)
    assert sum(tp.values()) >= 100 and tp["phone"] >= 50 and tp["credit_card"] >= 38
    assert summary.dropped == len(spelled)


def test_redacted_copy_replaces_exactly_the_found_spans(judged):
    _, spelled, by_text, copy_of, _ = judged
    for record in spelled:
        row = by_text[tuple(record[f] for f in FIELDS)]
        copy = copy_of[row["id"]]
        for field in FIELDS:
            expected = record[field]
            for e in sorted(record["expect"], key=lambda e: -len(e["text"])):
                if e["field"] == field:
                    expected = expected.replace(e["text"], pii.KINDS[e["kind"]][1])
            assert copy[field] == expected
        kinds = Counter(e["kind"] for e in record["expect"])
        detail = ", ".join(f"{k} {kinds[k]}" for k in pii.KINDS if k in kinds)
        assert re.fullmatch(rf"pii_redacted {detail} -> \w+", row["reason"]), (row["reason"], detail)


def frame(*texts: str) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(texts))], "instruction": list(texts)})


def phones(config: pii.PiiConfig, *texts: str) -> list[str]:
    found = dict((k, r) for k, r, _ in pii.findings(frame(*texts), config))
    return [found.get("phone", {}).get(t, t) for t in texts]


def test_phone_regions_decide_national_spellings():
    texts = ("call 020 7946 0958", "call (415) 555-2671", "call +44 20 7946 0958", "call +33 1 42 68 53 00")
    assert phones(pii.PiiConfig(), *texts) == ["call [PHONE]"] * 4
    assert phones(pii.PiiConfig(phone_regions=["US"]), *texts) == [
        "call 020 7946 0958",
        "call [PHONE]",
        "call [PHONE]",
        "call [PHONE]",
    ]
    assert phones(pii.PiiConfig(phone_regions=[]), *texts)[:2] == list(texts[:2])  # only numbers with +


def test_card_needs_issuer_length_luhn_and_grouping():
    assert pii.is_card(["4111111111111111"]) and pii.is_card(["4111", "1111", "1111", "1111"])
    assert pii.is_card(["3400", "000000", "00009"]) and pii.is_card(["3056", "930902", "5904"])
    assert not pii.is_card(["3400", "0000", "0000", "009"])  # Amex is 4-6-5
    assert not pii.is_card(["1000000000000008"])  # Luhn-valid, no issuer
    assert not pii.is_card(["3400000000000009"])  # Amex prefix, 16 digits
    assert not pii.is_card(["4111", "1111", "1111", "1112"])  # fails Luhn
    assert list(pii.card_spans("4111 1111-1111 1111")) == []  # mixed separators
    assert list(pii.card_spans("Invoice 2024 4111 1111 1111 1111 paid")) == [(13, 32)]


def test_conversation_turns_are_redacted_turn_by_turn():
    turns = [
        {"role": "user", "content": "my card is 4111-1111-1111-1111, ring 020 7946 0958 after 14:30"},
        {"role": "assistant", "content": "Noted 020 7946 0958 for 2024-01-15."},
    ]
    rows = pl.DataFrame({"id": ["a"], "instruction": [None], "messages": [turns]})
    rows = rows.with_columns(
        *(pl.lit(None, pl.String).alias(f) for f in ["system", "input", "output", "rejected"])
    )
    result = pii.run(rows, rows.head(0), pii.PiiConfig())
    assert [t["content"] for t in result.rows["messages"][0]] == [
        "my card is [CREDIT_CARD], ring [PHONE] after 14:30",
        "Noted [PHONE] for 2024-01-15.",
    ]
    assert json.loads(result.rows["generator_params"][0]) == {"redacted": "credit_card 1, phone 2"}
