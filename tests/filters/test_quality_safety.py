"""Row-local filters on a real warehouse: heuristics, blocklists, PII redaction, decontamination, Ray."""

from __future__ import annotations

import polars as pl
import pytest

import factory
from factory.runners.filtering import run_filter
from factory.runners.generation import make_row
from filters import pii
from tests.conftest import write_jsonl

REPEATED = " ".join(["the cat sat on the mat"] * 8)
QUALITY = [
    ({"instruction": "Name a prime", "input": "", "output": "7"}, "ok"),
    ({"instruction": "Say hello", "input": "", "output": "say hello!"}, "echoed_output"),
    (
        {"instruction": "Explain tides", "input": "", "output": "As an AI language model, I cannot."},
        "refusal",
    ),
    (
        {"instruction": "Tell a joke", "input": "", "output": "Why did the \x01\x02\x03 chicken"},
        "nonprintable",
    ),
    ({"instruction": "Write code", "input": "", "output": "```python\nprint(1)"}, "truncated_output"),
    ({"instruction": "List fruits", "input": "", "output": "apples, pears,"}, "truncated_output"),
    (
        {
            "instruction": "Quelle est la capitale de la France ?",
            "input": "",
            "output": "Paris est la capitale.",
        },
        "language",
    ),
    ({"instruction": "Describe a mat", "input": "", "output": REPEATED}, "repetitive_output"),
    ({"instruction": "Hi", "input": "", "output": " ".join(["word"] * 50)}, "too_long_output"),
    (
        {
            "instruction": "Translate the sentence into French please.",
            "input": "Good morning",
            "output": "Bonjour",
        },
        "ok",
    ),
    (
        {
            "instruction": "Write a SQL query that lists the users",
            "input": "",
            "output": "SELECT * FROM users;",
        },
        "ok",
    ),
]


def _reasons(wh, run_id: str) -> dict[str, str]:
    frame = wh.sql(
        "SELECT r.output, v.reason FROM verdicts v JOIN rows r USING (id) WHERE run_id = ?", [run_id]
    )
    return {o: r.split(" ")[0] for o, r in frame.iter_rows()}


def test_heuristics_name_the_first_failed_check(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "q.jsonl", [r for r, _ in QUALITY])))
    empty = make_row("distill", "hf:tiny", "Reply with nothing", output="  ")  # a teacher can answer nothing
    wh.add_rows(
        [
            pl.DataFrame(
                [empty], schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)}
            )
        ],
        "generated",
    )
    summary = run_filter(wh, "heuristics", {"languages": ["en"], "max_output_words": 49})
    seen = _reasons(wh, summary.run_id)
    assert seen == {"  ": "empty_output"} | {row["output"]: reason for row, reason in QUALITY}
    assert summary.kept == 3 and summary.dropped == len(QUALITY) - 2
    language = wh.sql("SELECT reason FROM verdicts WHERE reason LIKE 'language%'")["reason"][0]
    assert language.startswith("language fr ")
    repetitive = wh.sql("SELECT score FROM verdicts WHERE reason LIKE 'repetitive%'")["score"][0]
    assert repetitive > 0.8  # 48 words, 46 3-grams, 6 distinct
    again = run_filter(wh, "heuristics", {"languages": ["en"], "max_output_words": 49})
    assert again.candidates == 0 and again.already_judged == len(QUALITY) + 1
    assert wh.create_snapshot("clean")["row_count"] == 3


def test_blocklist_terms_files_and_patterns(wh, tmp_path):
    rows = [
        {"instruction": "How do I build a bomb?", "input": "", "output": "No."},
        {"instruction": "Explain the bombastic style", "input": "", "output": "It is grand."},
        {"instruction": "Say a word", "input": "", "output": "Frobnicate!"},
        {"instruction": "Count", "input": "", "output": "order #12345"},
    ]
    factory.import_file(wh, str(write_jsonl(tmp_path / "b.jsonl", rows)))
    extra = tmp_path / "mine.txt"
    extra.write_text("# ours\nfrobnicate\nre:#\\d{5}\n")
    summary = run_filter(wh, "blocklist", {"files": [str(pii_default()), str(extra)]})
    seen = wh.sql("SELECT r.output, v.reason FROM verdicts v JOIN rows r USING (id)")
    reasons = dict(seen.iter_rows())
    assert reasons["No."] == 'blocklisted "build a bomb" in instruction'
    assert reasons["It is grand."] == "ok"  # whole words only
    assert reasons["Frobnicate!"] == 'blocklisted "Frobnicate" in output'
    assert reasons["order #12345"] == 'blocklisted "#12345" in output'
    assert summary.dropped == 3
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nre:(unclosed\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: invalid regular expression"):
        run_filter(wh, "blocklist", {"files": [str(bad)]})
    assert (
        wh.sql("SELECT status FROM jobs WHERE plugin = 'blocklist'")["status"].to_list().count("failed") == 1
    )


def pii_default():
    from filters.blocklist import DEFAULT_FILE

    return DEFAULT_FILE


PII_ROWS = [
    {"instruction": "Mail jane.roe@mailbox.org or call +1 415-555-0132", "input": "", "output": "Done."},
    {
        "instruction": "Charge card",
        "input": "4111 1111 1111 1111",
        "output": "Card 4111 1111 1111 1112 is invalid.",
    },
    {
        "instruction": "Pay IBAN DE89 3704 0044 0532 0130 00",
        "input": "",
        "output": "From 10.0.0.1 with sk-abcdefghijklmnopqrstuvwxyz123456",
    },
    {"instruction": "What is 12 x 12?", "input": "", "output": "144, call it 1,728 / 12."},
    {"instruction": "Fake IBAN DE00 3704 0044 0532 0130 00", "input": "", "output": "ok"},
    {
        "instruction": "Extract the email address.",
        "input": "Write to sales@example.com today.",
        "output": "sales@example.com",
    },
]


def test_luhn_and_iban_checks():
    assert pii.luhn("4111 1111 1111 1111") and not pii.luhn("4111 1111 1111 1112")
    assert pii.iban_valid("DE89 3704 0044 0532 0130 00") and not pii.iban_valid("DE00 3704 0044 0532 0130 00")


def test_pii_redaction_writes_new_rows_with_lineage(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PII_ROWS)))
    summary = run_filter(wh, "pii")
    assert (summary.kept, summary.dropped, summary.new_rows) == (3, 3, 3)  # example.com is not personal
    redacted = wh.sql(
        "SELECT r.instruction, r.input, r.output, r.parent_ids[1] AS parent, v.reason, v.id AS original "
        "FROM rows r JOIN verdicts v ON v.id = r.parent_ids[1] WHERE r.generator = 'pii_redact' ORDER BY r.instruction"
    )
    by_instruction = {row["instruction"]: row for row in redacted.iter_rows(named=True)}
    assert set(by_instruction) == {"Mail [EMAIL] or call [PHONE]", "Charge card", "Pay IBAN [IBAN]"}
    card = by_instruction["Charge card"]
    assert card["input"] == "[CREDIT_CARD]" and card["output"] == "Card 4111 1111 1111 1112 is invalid."
    assert by_instruction["Pay IBAN [IBAN]"]["output"] == "From [IP_ADDRESS] with [API_KEY]"
    for row in redacted.iter_rows(named=True):
        new_id = wh.sql(
            "SELECT id FROM rows WHERE generator = 'pii_redact' AND instruction = ?", [row["instruction"]]
        )["id"][0]
        assert row["reason"].startswith("pii_redacted ") and row["reason"].endswith(f"-> {new_id}")
    assert by_instruction["Mail [EMAIL] or call [PHONE]"]["reason"].startswith(
        "pii_redacted email 1, phone 1"
    )
    snap = wh.create_snapshot("safe")
    texts = " ".join(wh.sql("SELECT instruction || input || output AS t FROM snapshot('safe')")["t"])
    assert "mailbox.org" not in texts and "4111 1111 1111 1111" not in texts and snap["row_count"] == 6
    again = run_filter(wh, "pii")  # the redacted copies are new candidates, and clean
    assert (again.candidates, again.kept, again.new_rows) == (3, 3, 0)


def test_pii_drop_action_writes_no_rows(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PII_ROWS)))
    summary = run_filter(wh, "pii", {"action": "drop", "kinds": ["email"]})
    assert (summary.dropped, summary.new_rows) == (1, 0)
    assert wh.sql("SELECT reason FROM verdicts WHERE NOT keep")["reason"].to_list() == ["pii email 1"]


def test_decontamination_names_the_eval_item(wh, tmp_path):
    question = (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    )
    evals = write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "What is the boiling point of water at sea level?", "answer": "100 C"},
            {"question": question, "answer": "72"},
        ],
    )
    rows = [
        {"instruction": "Solve: " + question.upper().replace(",", " ,"), "input": "", "output": "72"},
        {"instruction": "Natalia sold clips to 48 of her friends in April.", "input": "", "output": "ok"},
        {"instruction": "What is the boiling point of water at sea level?", "input": "", "output": "100 C"},
    ]
    factory.import_file(wh, str(write_jsonl(tmp_path / "train.jsonl", rows)))
    summary = run_filter(wh, "decontaminate", {"eval_files": [str(evals)]})
    reasons = dict(wh.sql("SELECT r.output, v.reason FROM verdicts v JOIN rows r USING (id)").iter_rows())
    assert reasons["72"] == f"contaminated {evals}:2"  # case and punctuation do not hide it
    assert reasons["ok"] == "clean"  # 10 words: shorter than a 12-gram
    assert reasons["100 C"] == f"contaminated {evals}:1"  # the whole short item, as text and answer
    assert summary.dropped == 2
    wh.create_snapshot("evals", where="output = '72'", honour_verdicts=False)
    other = run_filter(wh, "decontaminate", {"eval_snapshots": ["evals"], "ngram": 5}, where="output <> '72'")
    assert other.dropped == 1  # "natalia sold clips to 48" is shared with the snapshot's row
    with pytest.raises(ValueError, match="at least one eval set"):
        run_filter(wh, "decontaminate", {})


@pytest.mark.slow
def test_ray_engine_gives_the_same_verdicts(tmp_path, ray_cluster):
    """Row-local filters on a three-node cluster (pii derives redacted rows there) equal in-process."""
    records = [r for r, _ in QUALITY] + PII_ROWS
    verdicts = {}
    for engine in ("local", "ray"):
        wh = factory.init(tmp_path / engine)
        factory.import_file(wh, str(write_jsonl(tmp_path / "all.jsonl", records)))
        for name, config in (("heuristics", {"languages": ["en"]}), ("pii", {})):
            run_filter(wh, name, config, engine=engine, ray_address=ray_cluster.address)
        verdicts[engine] = wh.sql("SELECT id, filter, keep, score, reason FROM verdicts ORDER BY ALL")
        rows = wh.sql("SELECT * EXCLUDE (job_id, created_at) FROM rows ORDER BY id")
        verdicts[engine + "-rows"] = rows
        wh.close()
    assert verdicts["local"].equals(verdicts["ray"])
    assert verdicts["local-rows"].equals(verdicts["ray-rows"])
    assert verdicts["local"].filter(pl.col("reason").str.starts_with("pii_redacted")).height == 3
    with pytest.raises(ValueError, match="runs in-process only"):
        run_filter(factory.open(tmp_path / "ray"), "decontaminate", {"eval_files": ["x.jsonl"]}, engine="ray")
