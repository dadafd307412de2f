"""Sampling with the `select` filter: M from a budget or a fraction, and the top, random and
stratified strategies, on a real warehouse with domains of unequal size and long-tailed lengths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import polars as pl
import pytest

import factory
from factory import plugins
from factory.errors import ConfigError
from factory.runners.filtering import run_filter
from factory.runners.generation import make_row
from tests.conftest import write_jsonl

# 48 rows: math 23, code 13, writing 7, and 5 without a domain (N_orig = 48).
DOMAINS = {"math": 23, "code": 13, "writing": 7, None: 5}
SUBJECTS = {"math": "Solve", "code": "Implement", "writing": "Draft", None: "Tell me about"}


def records(start: int = 0, stop: int = 48) -> list[dict]:
    """Rows start..stop of the 48; output lengths are long-tailed (a few very long) and all distinct."""
    domains = [d for d, n in DOMAINS.items() for _ in range(n)]
    out = []
    for i in range(start, stop):
        length = int(1.35 ** (i % 17)) * 50 + i  # 50..~8000 characters, distinct per row
        record = {
            "instruction": f"{SUBJECTS[domains[i]]} item {i} of the set",
            "input": "",
            "output": ("the answer, worked through step by step. " * (length // 40 + 1))[: length - 1] + ".",
        }
        if domains[i] is not None:
            record["domain"] = domains[i]
        out.append(record)
    return out


@pytest.fixture
def loaded(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "rows.jsonl", records())))
    return wh


def chosen(wh, run_id: str) -> pl.DataFrame:
    """The rows a run selected, with their domain and output length."""
    return wh.sql(
        "SELECT r.id, r.domain, length(r.output) AS length, v.score FROM verdicts v JOIN rows r USING (id) "
        "WHERE v.run_id = ? AND v.keep",
        [run_id],
    )


def reasons(wh, run_id: str) -> Counter:
    return Counter(wh.sql("SELECT reason FROM verdicts WHERE run_id = ?", [run_id])["reason"].to_list())


def test_the_rows_look_as_intended(loaded):
    got = loaded.sql("SELECT domain, count(*) AS n FROM rows GROUP BY ALL")
    assert dict(got.iter_rows()) == DOMAINS
    lengths = loaded.sql("SELECT length(output) AS n FROM rows")["n"]
    assert lengths.n_unique() == 48 and lengths.max() > 10 * lengths.median()  # long tail


@pytest.mark.parametrize(
    ("settings", "m"),
    [
        ({"fraction": 0.3}, 14),  # 14.4
        ({"fraction": 0.09375}, 5),  # 4.5: half up (Python's round would say 4)
        ({"fraction": 0.001}, 1),  # 0.048: at least one
        ({"fraction": 1.0}, 48),
        ({"budget": 10}, 10),
        ({"budget": 100}, 48),  # more than there are: every row
    ],
)
def test_m_is_exact_for_a_fraction_or_a_budget(loaded, settings, m):
    for strategy in ("random", "top", "stratified"):
        config = {**settings, "strategy": strategy}
        if strategy != "random":
            config["score_sql"] = "length(output)"
        if strategy == "stratified":
            config["stratify_by"] = "domain"
        summary = run_filter(loaded, "select", config)
        assert (summary.candidates, summary.kept, summary.dropped) == (48, m, 48 - m), strategy


def test_stratified_allocates_by_largest_remainder_with_a_null_stratum(loaded):
    # M = 14: 14 * (23, 13, 7, 5) / 48 = 6.71, 3.79, 2.04, 1.46 -> floors 6, 3, 2, 1 (12); the two
    # largest remainders (code .79, math .71) take the last two.
    config = {"fraction": 0.3, "strategy": "stratified", "stratify_by": "domain", "seed": 7}
    summary = run_filter(loaded, "select", config)
    got = Counter(chosen(loaded, summary.run_id)["domain"].to_list())
    assert got == {"math": 7, "code": 4, "writing": 2, None: 1}
    assert reasons(loaded, summary.run_id) == {
        "selected": 14,
        "not_sampled in domain=math": 16,
        "not_sampled in domain=code": 9,
        "not_sampled in domain=writing": 5,
        "not_sampled in domain=NULL": 4,
    }
    # The snapshot after it holds those rows, and show() derives the sampling from the stored run.
    loaded.create_snapshot("strat")
    info = loaded.show_snapshot("strat")
    (sampling,) = info["sampling"]
    assert {k: sampling[k] for k in ("strategy", "fraction", "budget", "m", "n_orig", "stratify_by")} == {
        "strategy": "stratified",
        "fraction": 0.3,
        "budget": None,
        "m": 14,
        "n_orig": 48,
        "stratify_by": "domain",
    }
    assert sampling["selected"] == 14 and sampling["runs"] == [summary.run_id]
    assert dict(sampling["strata"].iter_rows()) == {"math": 7, "code": 4, "writing": 2, None: 1}
    assert info["augmentation"] == {"augmented": 0, "sampled": 14, "train": 14}


def test_stratified_with_a_score_takes_each_strata_best(loaded):
    config = {"budget": 9, "strategy": "stratified", "stratify_by": "domain", "score_sql": "length(output)"}
    summary = run_filter(loaded, "select", config)
    # 9 * (23, 13, 7, 5) / 48 = 4.31, 2.44, 1.31, 0.94 -> 4, 2, 1, 0 and the remainders .94 (NULL), .44 (code)
    picked = chosen(loaded, summary.run_id)
    assert Counter(picked["domain"].to_list()) == {"math": 4, "code": 3, "writing": 1, None: 1}
    every = loaded.sql("SELECT id, domain, length(output) AS length FROM rows")
    for domain, n in Counter(picked["domain"].to_list()).items():
        stratum = every.filter(pl.col("domain").is_null() if domain is None else pl.col("domain") == domain)
        best = set(stratum.sort("length", descending=True).head(n)["id"].to_list())
        assert set(picked.filter(pl.col("id").is_in(list(stratum["id"])))["id"].to_list()) == best
    scored = loaded.sql(
        f"SELECT v.score, length(r.output) AS n FROM verdicts v JOIN rows r USING (id) WHERE run_id = '{summary.run_id}'"
    )
    assert (scored["score"] == scored["n"].cast(pl.Float64)).all()
    assert reasons(loaded, summary.run_id)["over_budget in domain=math"] == 19


def test_top_takes_the_m_best_scores_without_embeddings(loaded):
    summary = run_filter(loaded, "select", {"budget": 10, "strategy": "top", "score_sql": "length(output)"})
    picked = chosen(loaded, summary.run_id)
    best = loaded.sql("SELECT id FROM rows ORDER BY length(output) DESC LIMIT 10")["id"].to_list()
    assert set(picked["id"].to_list()) == set(best)
    assert (picked["score"] == picked["length"].cast(pl.Float64)).all()
    assert reasons(loaded, summary.run_id) == {"selected": 10, "over_budget": 38}
    assert loaded.sql("SELECT count(*) AS n FROM embeddings")["n"][0] == 0


def test_random_is_seeded(loaded, tmp_path):
    config = {"fraction": 0.25, "strategy": "random", "seed": 3}
    first = set(chosen(loaded, run_filter(loaded, "select", config).run_id)["id"].to_list())
    other = factory.init(tmp_path / "other")  # the same rows imported elsewhere, in reverse order
    try:
        factory.import_file(other, str(write_jsonl(tmp_path / "rev.jsonl", records()[::-1])))
        again = set(chosen(other, run_filter(other, "select", config).run_id)["id"].to_list())
        strat = {"fraction": 0.25, "strategy": "stratified", "stratify_by": "domain", "seed": 3}
        strat_other = set(chosen(other, run_filter(other, "select", strat).run_id)["id"].to_list())
    finally:
        other.close()
    assert len(first) == 12 and first == again
    reseeded = set(chosen(loaded, run_filter(loaded, "select", {**config, "seed": 4}).run_id)["id"].to_list())
    assert len(reseeded) == 12 and reseeded != first
    assert set(chosen(loaded, run_filter(loaded, "select", strat).run_id)["id"].to_list()) == strat_other
    verdicts = loaded.sql("SELECT score, reason FROM verdicts WHERE filter = 'select'")
    assert verdicts["score"].null_count() == verdicts.height  # no score, none claimed


@pytest.mark.parametrize("strategy", ["top", "random", "stratified"])
def test_a_rerun_tops_the_selection_up(wh, tmp_path, strategy):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", records(0, 40))))
    extra = {"random": {}, "top": {"score_sql": "length(output)"}}.get(strategy, {"stratify_by": "domain"})
    by_fraction = {"fraction": 0.25, "strategy": strategy, **extra}
    by_budget = {"budget": 10, "strategy": strategy, **extra}
    first = run_filter(wh, "select", by_fraction)
    assert first.kept == 10  # 0.25 * 40
    assert run_filter(wh, "select", by_budget).kept == 10
    factory.import_file(wh, str(write_jsonl(tmp_path / "b.jsonl", records(40, 48))))
    # N_orig is now 48, rows not sampled before included, so M = 12: two more of the eight new rows.
    topped = run_filter(wh, "select", by_fraction)
    assert (topped.candidates, topped.already_judged, topped.kept, topped.dropped) == (8, 40, 2, 6)
    wh.create_snapshot("mid")  # rows 0-39 follow the budget run, the new rows the fraction rerun
    entries = {e["fraction"]: e for e in wh.show_snapshot("mid")["sampling"]}
    assert (entries[0.25]["m"], entries[0.25]["n_orig"], len(entries[0.25]["runs"])) == (12, 48, 2)
    assert (entries[None]["m"], entries[None]["budget"]) == (10, 10)
    spent = run_filter(wh, "select", by_budget)  # the budget was spent by the first run
    assert (spent.candidates, spent.kept) == (8, 0)
    assert {reason.split(" ")[0] for reason in reasons(wh, spent.run_id)} == {
        "over_budget" if strategy == "top" else "not_sampled"
    }
    wh.create_snapshot("after")  # every row now follows a budget run: the fraction config decided none
    assert [e["budget"] for e in wh.show_snapshot("after")["sampling"]] == [10]


def test_a_stratified_rerun_keeps_the_strata_in_proportion(wh, tmp_path):
    # First 24 rows: all math (23) and one code row; then the other 24 arrive.
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", records(0, 24))))
    config = {"fraction": 0.5, "strategy": "stratified", "stratify_by": "domain"}
    # M = 12: math 11.5, code 0.5, a tie in remainders that the larger stratum wins: math 12, code 0.
    assert run_filter(wh, "select", config).kept == 12
    factory.import_file(wh, str(write_jsonl(tmp_path / "b.jsonl", records(24, 48))))
    run_filter(wh, "select", config)
    # M = 24 over 48: math 11.5, code 6.5, writing 3.5, NULL 2.5 -> 11, 6, 3, 2 (22) + the two largest
    # strata take the tied remainders: math 12, code 7. Math has its 12 from the first run already.
    kept = wh.sql(
        "SELECT r.domain, count(*) AS n FROM rows r WHERE r.id IN (SELECT id FROM verdicts WHERE filter = 'select' "
        "AND keep) GROUP BY ALL"
    )
    got = dict(kept.iter_rows())
    assert sum(got.values()) == 24
    assert got == {"math": 12, "code": 7, "writing": 3, None: 2}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget": 5, "fraction": 0.5, "strategy": "random"}, "exactly one of budget=M"),
        ({"strategy": "random"}, "exactly one of budget=M"),
        ({"fraction": 0, "strategy": "random"}, "fraction: Input should be greater than 0"),
        ({"fraction": 1.5, "strategy": "random"}, "fraction: Input should be less than or equal to 1"),
        ({"fraction": 0.5, "strategy": "stratified"}, "strategy=stratified needs stratify_by=COLUMN"),
        (
            {"fraction": 0.5, "strategy": "stratified", "stratify_by": "colour"},
            "'colour' is not a rows column",
        ),
        ({"fraction": 0.5, "strategy": "stratified", "stratify_by": "tags"}, "'tags' is not a rows column"),
        ({"fraction": 0.5, "strategy": "top"}, "strategy=top ranks rows"),
        ({"budget": 5}, "strategy=diverse ranks rows"),
        (
            {"budget": 5, "strategy": "random", "score_filter": "judge"},
            "strategy=random draws rows uniformly",
        ),
        (
            {"budget": 5, "strategy": "random", "stratify_by": "domain"},
            "stratify_by applies to strategy=stratified",
        ),
        (
            {"budget": 5, "strategy": "top", "score_sql": "1", "threshold": 0.8},
            "threshold apply to strategy=diverse",
        ),
        ({"budget": 5, "strategy": "top", "score_sql": "1", "seed": 2}, "seed applies to random draws only"),
        ({"budget": 5, "strategy": "sometimes", "score_sql": "1"}, "strategy: Input should be"),
    ],
)
def test_contradictory_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plugins.configured("filter", "select", settings)


def test_snapshot_show_prints_sampling_and_augmentation(tmp_path):
    env = {**os.environ, "FACTORY_WAREHOUSE": str(tmp_path / "wh"), "COLUMNS": "200"}

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "factory.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    cli("init")
    write_jsonl(tmp_path / "rows.jsonl", records())
    cli("import", "rows.jsonl", "--no-progress")
    out = cli(
        "filter",
        "select",
        "--fraction",
        "0.3",
        "--set",
        "strategy=stratified",
        "--set",
        "stratify_by=domain",
    )
    assert "48 row(s) judged" in out
    wh = factory.open(str(tmp_path / "wh"))
    try:  # three augmented copies of sampled rows, as the augment generator writes them
        parents = wh.sql(
            "SELECT id, instruction FROM rows WHERE id IN (SELECT id FROM verdicts WHERE keep) LIMIT 3"
        )
        wh.add_rows(
            [
                pl.DataFrame(
                    [
                        make_row("augment", "", f"{text} (reworded)", "w0 w1", parents=[pid])
                        for pid, text in parents.iter_rows()
                    ],
                    schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)},
                )
            ],
            "augment",
        )
    finally:
        wh.close()
    cli("snapshot", "create", "train-mix", "-m", "sampled plus augmented")
    show = cli("snapshot", "show", "train-mix")
    assert "train-mix: 17 rows" in show
    assert (
        "sampling: strategy stratified by domain, fraction alpha = 0.3, M = round(alpha * N_orig) = 14, "
        "N_orig = 48; 14 selected row(s) in this snapshot" in show
    )
    assert "sampled rows by domain" in show and "(none)" in show
    assert "augmentation: |D_aug| = 3 rows made by augment; |D_train| = M + |D_aug| = 14 + 3 = 17" in show


def test_show_leaves_out_a_selection_a_later_one_overrode(loaded):
    """A row follows its latest select verdict: after a random draw over the same rows, the stratified
    selection decides none of the snapshot's rows and is not reported as its sampling."""
    from factory.store import snapshots

    strat = run_filter(loaded, "select", {"fraction": 0.3, "strategy": "stratified", "stratify_by": "domain"})
    rand = run_filter(loaded, "select", {"fraction": 0.25, "strategy": "random", "seed": 5})
    loaded.create_snapshot("drawn")
    sampling = snapshots.show(loaded, "drawn")["sampling"]
    assert [entry["runs"] for entry in sampling] == [[rand.run_id]]
    assert (
        sampling[0]["decided"] == sampling[0]["selected"] == 12 == snapshots.get(loaded, "drawn")["row_count"]
    )
    assert strat.run_id in snapshots.get(loaded, "drawn")["filter_runs"]  # honoured, but decided nothing


def test_a_nan_score_ranks_last_not_first(loaded):
    run = run_filter(loaded, "select", {"budget": 5, "strategy": "top",
                                         "score_sql": "CASE WHEN domain = 'math' THEN 'nan'::DOUBLE ELSE length(output) END"})  # fmt: skip
    picked = chosen(loaded, run.run_id)
    assert picked.height == 5 and "math" not in picked["domain"].to_list()
    assert picked["score"].is_not_null().all()


def test_the_row_id_is_not_a_stratum(loaded):
    with pytest.raises(ConfigError, match="not a rows column to stratify by"):
        run_filter(loaded, "select", {"fraction": 0.3, "strategy": "stratified", "stratify_by": "id"})
