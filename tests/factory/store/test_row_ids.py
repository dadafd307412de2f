"""Row ids never change: every warehouse already written keeps its ids.

`schema.row_ids` builds a single exchange's record in one concatenation (issue 14: the
nested concatenations copied every text three times). These tests hold it to the
implementation it replaced, kept here verbatim as `reference_ids`, on rows of every
shape (unicode, empty and null fields, conversations, preference rows), and to Python's
hashlib over the documented record text, so an id computed today matches one stored
by any earlier release.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime

import polars as pl
import polars_hash  # noqa: F401  (the chash namespace)

from factory.store import schema
from factory.store.warehouse import _staging_frame, _stored_rows, ids_of

US, RS = schema.UNIT_SEP, schema.RECORD_SEP


def reference_ids(rows: pl.DataFrame) -> pl.Series:
    """The row id as computed up to issue 14 (verbatim), the reference every later version must match."""
    user = pl.concat_str(
        [pl.col("instruction"), pl.when(pl.col("input") != "").then(pl.lit("\n\n") + pl.col("input"))],
        ignore_nulls=True,
    )
    body = pl.concat_str([pl.lit("user" + US), user, pl.lit(RS + "assistant" + US), pl.col("output")])
    if rows["messages"].is_not_null().any():
        turns = (
            pl.col("messages")
            .list.eval(pl.element().struct.field("role") + US + pl.element().struct.field("content"))
            .list.join(RS)
        )
        body = pl.when(pl.col("messages").is_null()).then(body).otherwise(turns)
    record = pl.concat_str([pl.col("system"), body, pl.col("rejected").fill_null("")], separator=RS)
    return rows.select(record.chash.sha2_256().str.slice(0, 32).alias("id")).to_series()


TEXTS = [
    "",
    "plain words",
    "  padded  ",
    "line one\n\nline two",
    "café naïve façade",
    "数据 清洗 与 指令",
    "emoji 🙂👍🏽 and a ZWJ 👩‍💻",
    "e\u0301 combining accent",
    "right-to-left עברית العربية",
    "tab\there",
    "looks like a separator \\x1e but is not",
    "x" * 5000,
]


def random_rows(seed: int, n: int, conversations: bool) -> pl.DataFrame:
    rng = random.Random(seed)

    def text(nullable: bool = True) -> str | None:
        return None if nullable and rng.random() < 0.15 else rng.choice(TEXTS)

    def turns() -> list[dict] | None:
        if not conversations or rng.random() < 0.4:
            return None
        if rng.random() < 0.1:
            return []
        return [
            {"role": rng.choice(["user", "assistant", "system", None]), "content": text()}
            for _ in range(rng.randint(1, 5))
        ]

    records = [
        {
            "system": text(),
            "instruction": text(),
            "input": text(),
            "output": text(),
            "messages": turns(),
            "rejected": text(),
        }
        for _ in range(n)
    ]
    schema_ = {name: pl.String for name in ("system", "instruction", "input", "output", "rejected")}
    return pl.DataFrame(records, schema={**schema_, "messages": schema.MESSAGE_DTYPE})


def test_ids_match_the_reference_on_varied_rows():
    for seed, conversations in [(1, False), (2, True), (3, True)]:
        rows = random_rows(seed, 3000, conversations)
        ours, reference = schema.row_ids(rows), reference_ids(rows)
        assert ours.null_count() == reference.null_count() > 0  # null system or output: no id, as before
        assert ours.equals(reference), f"seed {seed}: ids differ from the reference"


def test_ids_match_the_reference_without_nulls_and_in_every_column_order():
    rows = random_rows(4, 2000, conversations=True).with_columns(
        pl.col(c).fill_null("") for c in ("system", "instruction", "input", "output")
    )
    shuffled = rows.select(reversed(rows.columns))
    assert schema.row_ids(rows).equals(reference_ids(rows))
    assert schema.row_ids(shuffled).equals(reference_ids(rows))
    assert schema.row_ids(rows).null_count() == 0


def test_ids_are_sha256_of_the_documented_record():
    rows = [
        ("", "Summarize the article.", "", "A summary.", None),
        ("Be brief.", "Translate: 数据", "context 🙂", "data", None),
        ("", "Which is better?", "", "this one", "that one"),
    ]
    frame = pl.DataFrame(
        rows, schema=["system", "instruction", "input", "output", "rejected"], orient="row"
    ).with_columns(pl.lit(None, schema.MESSAGE_DTYPE).alias("messages"))
    expected = []
    for system, instruction, input_, output, rejected in rows:
        user = instruction + ("\n\n" + input_ if input_ else "")
        record = RS.join([system, "user" + US + user + RS + "assistant" + US + output, rejected or ""])
        expected.append(hashlib.sha256(record.encode()).hexdigest()[:32])
    assert schema.row_ids(frame).to_list() == expected


def test_an_exchange_and_the_same_conversation_share_an_id():
    single = pl.DataFrame(
        {"system": [""], "instruction": ["Add 2 and 2."], "input": ["Show the steps."], "output": ["4"]}
    ).with_columns(
        pl.lit(None, pl.String).alias("rejected"), pl.lit(None, schema.MESSAGE_DTYPE).alias("messages")
    )
    turns = [
        {"role": "user", "content": "Add 2 and 2.\n\nShow the steps."},
        {"role": "assistant", "content": "4"},
    ]
    conversation = single.with_columns(pl.Series("messages", [turns], dtype=schema.MESSAGE_DTYPE))
    both = pl.concat([single, conversation])
    assert schema.row_ids(single)[0] == schema.row_ids(conversation)[0] == schema.row_ids(both)[1]


def test_stored_rows_carry_the_same_ids_as_ids_of():
    rows = random_rows(5, 500, conversations=True).with_columns(
        pl.col("system").fill_null(""), pl.col("output").fill_null("answer")
    )
    stored = _stored_rows(rows, "job-1", datetime.now(UTC))
    assert stored["id"].equals(ids_of(rows))
    assert stored["id"].equals(reference_ids(_staging_frame(rows)))
