"""The verdict rule (factory/runners/places.py): no order of filters loses or resurrects an example.

On the realistic corpus (templated near-duplicates across files, PII in rows that also have
duplicates, rows heuristics drop), twenty orders of exact, minhash, semantic, pii and heuristics
(each filter at each place, each pair both ways round) give a final snapshot with the same
examples (lineage roots), and every dedup reason names a living row with a true similarity.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import polars as pl
import pytest

import factory
from factory.models.embeddings import BUNDLED, row_embeddings
from factory.runners import places
from factory.runners.filtering import run_filter

DATA = Path(__file__).parents[1] / "data" / "realistic"
FILTERS = ("exact", "minhash", "semantic", "pii", "heuristics")
CONFIGS = {"minhash": {"threshold": 0.7}, "semantic": {"threshold": 0.9}}


def _extra_rows(folder: Path) -> Path:
    """Copies that make the filters interact: PII rows with near-duplicate and exact copies, and rows
    that heuristics drops while a duplicate of them survives."""
    spellings = [json.loads(line) for line in (DATA / "pii_spellings.jsonl").read_text().splitlines()]
    rows = []
    for k, row in enumerate(spellings[:12]):
        rows.append(
            {"instruction": row["instruction"], "input": row["input"], "output": row["output"] + " Thanks."}
        )
        if k % 3 == 0:  # the same request without the personal data: a near-duplicate of a redacted row
            rows.append({"instruction": row["instruction"], "input": row["input"], "output": row["output"]})
    for k in range(6):
        question = f"Summarise the meeting notes from week {k + 1} in two sentences."
        rows.append({"instruction": question, "output": "As an AI language model, I cannot do that."})
        rows.append(
            {"instruction": question, "output": f"Week {k + 1}: the team shipped the release and planned QA."}
        )
    path = folder / "interactions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("order")
    wh = factory.init(root / "wh")
    paths = [
        DATA / "templated",
        DATA / "finetune",
        DATA / "tasks" / "seed_tasks.jsonl",
        DATA / "pii_spellings.jsonl",
        DATA / "numbers_not_pii.jsonl",
        _extra_rows(root),
    ]
    factory.import_file(wh, paths, on_error="skip")
    rows = wh.sql("SELECT * FROM rows")
    assert 300 <= rows.height <= 1000
    row_embeddings(rows, "instruction_input", BUNDLED, wh)  # once: every order reads them from the warehouse
    wh.close()
    return root / "wh"


def _final_examples(template: Path, folder: Path, order: tuple[str, ...]) -> frozenset[str]:
    """The examples (lineage roots) in the snapshot after running the filters in this order;
    checks on the way that every dedup reason is true."""
    shutil.copytree(template, folder)
    wh = factory.open(folder)
    for name in order:
        run_filter(wh, name, CONFIGS.get(name))
    roots = _examples_and_reasons(wh)
    wh.close()
    shutil.rmtree(folder)
    return roots


def _check_reasons(verdicts: pl.DataFrame, view: places.Places) -> None:
    """Every dedup drop of a living row names a kept row whose place is alive, with a true similarity
    (a dead place's rows are not compared again: their dedup verdicts are moot while it is dead)."""
    living = ~view.root_of(verdicts["id"]).is_in(list(view.dead))
    dropped = verdicts.filter(
        living & ~pl.col("keep") & pl.col("filter").is_in(["exact", "minhash", "semantic"])
    )
    named = dropped.with_columns(pl.col("reason").str.extract(places.WINNER, 1).alias("winner"))
    assert named["winner"].null_count() == 0
    dead = set(view.root_of(named["winner"]).to_list()) & view.dead
    assert not dead, f"a dedup named a row of a dead place as the one kept: {sorted(dead)[:3]}"
    near = named.filter(pl.col("filter") == "minhash")
    assert near["score"].null_count() == 0 and (near["score"] >= CONFIGS["minhash"]["threshold"]).all()
    sem = named.filter(pl.col("filter") == "semantic")
    assert (sem["score"] >= CONFIGS["semantic"]["threshold"] - 1e-4).all()


def _examples_and_reasons(wh) -> frozenset[str]:
    snapshot = factory.create_snapshot(wh, "final")
    ids = wh.sql(f"SELECT id FROM snapshot('{snapshot['name']}')")["id"]
    view = places.places(wh)
    verdicts = wh.sql(
        "SELECT id, filter, keep, score, reason FROM verdicts "
        "QUALIFY row_number() OVER (PARTITION BY id, filter ORDER BY created_at DESC, run_id DESC) = 1"
    )
    _check_reasons(verdicts, view)
    return frozenset(view.root_of(ids).to_list())


def _orders() -> list[tuple[str, ...]]:
    """Twenty of the 120 orders: the five rotations of FILTERS and of its reverse (each filter at
    each place twice, each pair of filters both ways round), and ten more drawn with a fixed seed.
    All 120 took 8 minutes of the test run (325 filter runs); these take about 80 runs."""
    rotations = [FILTERS[k:] + FILTERS[:k] for k in range(len(FILTERS))]
    designed = rotations + [tuple(reversed(order)) for order in rotations]
    others = sorted(set(itertools.permutations(FILTERS)) - set(designed))
    return designed + random.Random(20261202).sample(others, 10)


@pytest.mark.slow
def test_orders_of_five_filters_keep_the_same_examples(built, tmp_path):
    """The orders, walked as a tree: orders that share their first filters share those runs
    (a copy of the warehouse after each prefix)."""
    orders = _orders()
    results: dict[frozenset[str], list[tuple[str, ...]]] = {}

    def walk(folder: Path, done: tuple[str, ...]) -> None:
        if len(done) == len(FILTERS):
            with factory.open(folder) as wh:
                results.setdefault(_examples_and_reasons(wh), []).append(done)
            return
        for name in dict.fromkeys(order[len(done)] for order in orders if order[: len(done)] == done):
            after = tmp_path / "-".join((*done, name))
            shutil.copytree(folder, after)
            with factory.open(after) as wh:
                run_filter(wh, name, CONFIGS.get(name))
            walk(after, (*done, name))
            shutil.rmtree(after)

    walk(built, ())
    sizes = {len(r): len(orders) for r, orders in results.items()}
    print(f"\n{sum(sizes.values())} orders -> {len(results)} distinct result(s) (examples: orders): {sizes}")
    assert sorted(o for done in results.values() for o in done) == sorted(orders)
    assert len(results) == 1, {len(r): orders[:3] for r, orders in results.items()}


def test_a_redacted_copy_takes_its_parents_place_both_ways(built, tmp_path):
    """The two orders the issue names: dedup then pii, and pii then dedup (and dedup again)."""
    first = _final_examples(built, tmp_path / "a", ("exact", "minhash", "pii"))
    second = _final_examples(built, tmp_path / "b", ("pii", "exact", "minhash"))
    assert first == second
    shutil.copytree(built, tmp_path / "c")
    wh = factory.open(tmp_path / "c")
    run_filter(wh, "minhash", CONFIGS["minhash"])
    run_filter(wh, "pii")
    again = run_filter(wh, "minhash", CONFIGS["minhash"])
    assert again.dropped == 0 and again.candidates == 0  # the redacted copies inherited minhash's verdicts
    redacted = wh.sql("SELECT id, parent_ids[1] AS parent FROM rows WHERE generator = 'pii_redact'")
    assert redacted.height > 10
    inherited = wh.sql(
        "SELECT id, keep, reason FROM verdicts WHERE filter = 'minhash' AND reason LIKE '%(inherited from %'"
    )
    assert set(inherited["id"]) == set(redacted["id"])
    snap = factory.create_snapshot(wh, "s")
    members = set(wh.sql(f"SELECT id FROM snapshot('{snap['name']}')")["id"])
    parents_kept = set(
        wh.sql(
            "SELECT id FROM verdicts WHERE filter = 'minhash' AND keep AND NOT contains(reason, 'inherited')"
        )["id"]
    )
    for child, parent in redacted.iter_rows():
        assert (child in members) == (parent in parents_kept)  # kept exactly when its parent was


def test_a_dedup_is_repaired_when_heuristics_drops_the_row_it_kept(built, tmp_path):
    shutil.copytree(built, tmp_path / "wh")
    wh = factory.open(tmp_path / "wh")
    run_filter(wh, "exact", {"key": "instruction"})  # the refusals come first and win their group
    refused = wh.sql(
        "SELECT id FROM rows WHERE output LIKE 'As an AI language model%' AND instruction LIKE 'Summarise the meeting%'"
    )["id"].to_list()
    losers = wh.sql(
        "SELECT id FROM verdicts WHERE filter = 'exact' AND NOT keep AND reason LIKE '%of ' || ? ",
        [refused[0]],
    )
    assert losers.height == 1
    run_filter(wh, "heuristics")  # drops the refusals; exact is run again for the rows it named
    snap = factory.create_snapshot(wh, "s")
    members = set(wh.sql(f"SELECT id FROM snapshot('{snap['name']}')")["id"])
    assert losers["id"][0] in members and not set(refused) & members
    jobs = wh.sql("SELECT plugin FROM jobs WHERE kind = 'filter' ORDER BY started_at")["plugin"].to_list()
    assert jobs == ["exact", "heuristics", "exact"]


def test_decontaminate_reads_nested_task_files_and_prediction_files_like_import(tmp_path):
    wh = factory.init(tmp_path / "wh")
    seeds = [json.loads(line) for line in (DATA / "tasks" / "seed_tasks.jsonl").read_text().splitlines()]
    leaked = seeds[3]["instances"][0]["output"]  # only inside the nested instances of the eval set
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"instruction": "Tell a story.", "output": leaked})
        + "\n"
        + json.dumps(
            {
                "instruction": "What is 12 * 12 exactly, and why?",
                "output": "It is 144 because twelve twelves.",
            }
        )
        + "\n"
    )
    factory.import_file(wh, train)
    summary = run_filter(wh, "decontaminate", {"eval_files": [str(DATA / "tasks" / "seed_tasks.jsonl")]})
    reasons = wh.sql("SELECT reason FROM verdicts WHERE NOT keep")["reason"].to_list()
    assert (
        summary.dropped == 1 and reasons[0].startswith("contaminated ") and "seed_tasks.jsonl:4" in reasons[0]
    )
    with pytest.raises(Exception, match=r"eval set: .*predictions\.jsonl:1: field 'instruction': is missing"):
        run_filter(
            wh,
            "decontaminate",
            {"eval_files": [str(DATA / "predictions.jsonl")], "eval_format": "alpaca", "ngram": 3},
        )
    found = run_filter(
        wh,
        "decontaminate",
        {
            "eval_files": [str(DATA / "predictions.jsonl")],
            "eval_map": {"instruction": "prompt", "output": "reference"},
            "ngram": 3,
        },
    )
    assert (
        found.candidates == 2 and found.dropped == 1
    )  # "What is 12 * 12" shares 3 words with the prediction file


def test_a_place_that_comes_back_to_life_is_judged_again(tmp_path):
    wh = factory.init(tmp_path / "wh")
    rows = [
        {"instruction": "Explain photosynthesis briefly.", "output": f"Plants make sugar from light{p}"}
        for p in ("", "!")
    ]
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    factory.import_file(wh, path)
    first, second = wh.sql("SELECT id FROM rows ORDER BY rowid")["id"].to_list()
    run_filter(wh, "exact", {"key": "instruction"})

    def members() -> set[str]:
        snap = factory.create_snapshot(wh, f"s{len(wh.snapshots())}")
        return set(wh.sql(f"SELECT id FROM snapshot('{snap['name']}')")["id"])

    assert members() == {first}
    run_filter(wh, "blocklist", {"terms": ["sugar from light"]}, where=f"id = '{first}'")
    assert members() == {second}  # exact was repaired: the duplicate stands in for the blocked row
    run_filter(wh, "blocklist", {"terms": ["nothing matches this"]}, where=f"id = '{first}'")
    assert members() == {first}  # blocked no more: exact judged again, one copy, never both


def test_pii_in_meta_is_found_and_redacted_before_it_reaches_an_export(tmp_path):
    wh = factory.init(tmp_path / "wh")
    path = tmp_path / "preds.jsonl"
    path.write_text(
        json.dumps(
            {
                "prompt": "Where do I call?",
                "reference": "The front desk.",
                "response": "Call 415-555-2671 or write to lee.md@gmail.com",
            }
        )
        + "\n"
    )
    factory.import_file(wh, path, map={"instruction": "prompt", "output": "reference"})
    summary = run_filter(wh, "pii")
    assert summary.dropped == 1 and summary.new_rows == 0  # meta is outside the id: no copy can replace it
    reason = wh.sql("SELECT reason FROM verdicts")["reason"][0]
    assert reason.startswith("pii_in_meta email 1, phone 1: meta is outside the row id")
    snap = factory.create_snapshot(wh, "clean")
    out = factory.export(wh, snap["name"], tmp_path / "out", "parquet")
    assert out["counts"]["train"] == 0  # the personal data does not reach the export
    # in the text and in meta: the redacted copy carries a redacted meta
    path.write_text(
        json.dumps({"prompt": "Call 415-555-2671?", "reference": "Yes.", "response": "Dial 415-555-2671 now"})
        + "\n"
    )
    factory.import_file(wh, path, map={"instruction": "prompt", "output": "reference"})
    run_filter(wh, "pii")
    copy = wh.sql("SELECT instruction, meta FROM rows WHERE generator = 'pii_redact'").row(0)
    assert copy[0] == "Call [PHONE]?" and json.loads(copy[1])["response"] == "Dial [PHONE] now"


def test_a_row_derived_while_a_dedup_was_judging_gets_its_parents_verdict(tmp_path):
    wh = factory.init(tmp_path / "wh")
    rows = [
        {"instruction": "Call me back please.", "output": "Sure, at (415) 555-2671."},
        {"instruction": "Call me back please.", "output": "Sure, at (415) 555-2671!"},
    ]
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    factory.import_file(wh, path)
    before = factory.create_snapshot(wh, "before")  # what exact saw when it started
    run_filter(wh, "pii")  # ... while pii derived redacted copies
    run_filter(wh, "exact", {"key": "instruction"}, on=before["name"])
    children = wh.sql(
        "SELECT id, parent_ids[1] AS parent FROM rows WHERE generator = 'pii_redact' ORDER BY parent"
    )
    copied = wh.sql(
        "SELECT id, keep, reason FROM verdicts WHERE filter = 'exact' AND reason LIKE '%(inherited from %'"
    )
    assert set(copied["id"]) == set(children["id"])
    snap = factory.create_snapshot(wh, "after")
    assert wh.sql(f"SELECT count(*) AS n FROM snapshot('{snap['name']}')")["n"][0] == 1


def test_an_alpaca_export_of_a_mixed_snapshot_counts_the_rejected_answers_it_leaves_out(tmp_path):
    wh = factory.init(tmp_path / "wh")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text(json.dumps({"instruction": "Q1", "output": "A1"}) + "\n")
    (mixed / "b.jsonl").write_text(json.dumps({"prompt": "Q2", "chosen": "A2", "rejected": "B2"}) + "\n")
    factory.import_file(wh, mixed)
    snap = factory.create_snapshot(wh, "mixed")
    out = factory.export(wh, snap["name"], tmp_path / "out", "alpaca_jsonl")
    assert out["left_out"] == {"rejected_answer": 1} and out["counts"]["train"] == 2
