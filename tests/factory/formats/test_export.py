"""Export: every format round-trips to the same ids; the split is deterministic; trainers can read it."""

from __future__ import annotations

import json

import pytest

import factory
from tests.conftest import alpaca, write_jsonl
from tests.factory.formats.test_import import OPENAI, PREFERENCE_MESSAGES, SHAREGPT

SFT_FORMATS = ["alpaca", "alpaca_jsonl", "sharegpt", "openai", "trl", "llamafactory", "hf", "parquet"]
PREFERENCE_FORMATS = ["preference", "sharegpt", "llamafactory", "hf", "parquet"]


@pytest.fixture
def mixed(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(30))))
    write_jsonl(
        tmp_path / "hist.jsonl",
        [
            {
                "instruction": "And now?",
                "input": "",
                "output": "Done.",
                "system": "Be kind.",
                "history": [["Start", "Started."]],
            }
        ],
    )
    factory.import_file(wh, str(tmp_path / "hist.jsonl"))
    (tmp_path / "s.json").write_text(json.dumps(SHAREGPT))
    factory.import_file(wh, str(tmp_path / "s.json"))
    factory.import_file(wh, str(write_jsonl(tmp_path / "o.jsonl", OPENAI)))
    wh.create_snapshot("sft")
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PREFERENCE_MESSAGES)))
    wh.create_snapshot("pref", where="kind = 'preference'")
    return wh


def _reimported_ids(tmp_path, out, result) -> set[str]:
    other = factory.init(tmp_path / f"re_{result['format']}")
    for split, file in result["files"].items():
        if split not in ("dataset_info", "card"):  # the hf card is README.md, not data
            factory.import_file(other, str(out / file))
    return set(other.sql("SELECT id FROM rows")["id"])


@pytest.mark.parametrize("fmt", SFT_FORMATS)
def test_sft_round_trip_gives_back_the_same_ids(mixed, tmp_path, fmt):
    out = tmp_path / f"out_{fmt}"
    result = factory.export(mixed, "sft", out, fmt, eval_split=0.2, seed=3)
    expected = set(mixed.snapshot("sft")["id"])
    skipped = sum(result["skipped"].values())
    if fmt.startswith("alpaca"):
        assert skipped == 1  # the conversation with a tool turn has no alpaca form
        tool_row = mixed.sql(
            "SELECT id FROM rows WHERE list_contains(list_transform(messages, lambda m: m.role), 'tool')"
        )
        expected -= set(tool_row["id"])
    else:
        assert skipped == 0
    assert sum(result["counts"].values()) == len(expected)
    assert _reimported_ids(tmp_path, out, result) == expected


@pytest.mark.parametrize("fmt", PREFERENCE_FORMATS)
def test_preference_round_trip(mixed, tmp_path, fmt):
    out = tmp_path / f"pout_{fmt}"
    result = factory.export(mixed, "pref", out, fmt)
    assert result["preference"] is True
    assert _reimported_ids(tmp_path, out, result) == set(mixed.snapshot("pref")["id"])


def test_split_is_deterministic_disjoint_and_seeded(mixed, tmp_path):
    a = factory.export(mixed, "sft", tmp_path / "a", "openai", eval_split=0.3, seed=0)
    factory.export(mixed, "sft", tmp_path / "b", "openai", eval_split=0.3, seed=0)
    c = factory.export(mixed, "sft", tmp_path / "c", "openai", eval_split=0.3, seed=1)
    for split in ("train", "eval"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()
    assert a["counts"]["eval"] > 0 and a["counts"]["train"] > a["counts"]["eval"]
    train = set((tmp_path / "a" / "train.jsonl").read_text().splitlines())
    evals = set((tmp_path / "a" / "eval.jsonl").read_text().splitlines())
    assert not train & evals
    assert (tmp_path / "c" / "eval.jsonl").read_text() != (tmp_path / "a" / "eval.jsonl").read_text()
    assert c["counts"]["train"] + c["counts"]["eval"] == a["counts"]["train"] + a["counts"]["eval"]


def test_llamafactory_dataset_info(mixed, tmp_path):
    result = factory.export(mixed, "sft", tmp_path / "lf", "llamafactory", eval_split=0.2, name="mydata")
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert set(info) == {"mydata", "mydata_eval"}
    assert info["mydata"]["file_name"] == "train.json" and info["mydata"]["formatting"] == "sharegpt"
    assert info["mydata"]["columns"] == {"messages": "conversations", "system": "system"}
    records = json.loads((tmp_path / "lf" / "train.json").read_text())
    roles = {turn["from"] for r in records for turn in r["conversations"]}
    assert roles <= {"human", "gpt", "observation"} and len(records) == result["counts"]["train"]
    pref = factory.export(mixed, "pref", tmp_path / "lfp", "llamafactory")
    pinfo = json.loads((tmp_path / "lfp" / "dataset_info.json").read_text())["pref"]
    assert pinfo["ranking"] is True and pinfo["columns"]["chosen"] == "chosen"
    first = json.loads((tmp_path / "lfp" / "train.json").read_text())[0]
    assert first["conversations"][-1]["from"] == "human" and first["chosen"]["from"] == "gpt"
    assert pref["counts"]["train"] == 2


def test_hf_export_loads_with_datasets(mixed, tmp_path):
    datasets = pytest.importorskip("datasets")
    factory.export(mixed, "sft", tmp_path / "hf", "hf", eval_split=0.2)
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "hf" / "data"))
    assert set(ds) == {"train", "test"}
    total = ds["train"].num_rows + ds["test"].num_rows
    assert total == mixed.snapshot("sft").height
    sample = ds["train"][0]["messages"]
    assert sample[-1]["role"] == "assistant"


def test_openai_and_trl_records(mixed, tmp_path):
    factory.export(mixed, "sft", tmp_path / "o", "openai")
    lines = [json.loads(line) for line in (tmp_path / "o" / "train.jsonl").read_text().splitlines()]
    with_system = [r for r in lines if r["messages"][0]["role"] == "system"]
    assert {r["messages"][0]["content"] for r in with_system} == {"Be brief.", "You are terse.", "Be kind."}
    factory.export(mixed, "sft", tmp_path / "t", "trl")
    trl = [json.loads(line) for line in (tmp_path / "t" / "train.jsonl").read_text().splitlines()]
    assert all(len(r["completion"]) == 1 and r["completion"][0]["role"] == "assistant" for r in trl)
    assert all(r["prompt"][-1]["role"] in ("user", "tool") for r in trl)


def test_export_errors(mixed, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        factory.export(mixed, "sft", tmp_path / "x", "csv")
    with pytest.raises(ValueError, match="--eval-split must be in"):
        factory.export(mixed, "sft", tmp_path / "x", "openai", eval_split=1.5)
    with pytest.raises(Exception, match="no snapshot named 'nope'"):
        factory.export(mixed, "nope", tmp_path / "x", "openai")
    result = factory.export(mixed, "pref", tmp_path / "pp", "preference")
    assert result["skipped"] == {}
    manifest = json.loads((tmp_path / "pp" / "export.json").read_text())
    assert manifest["digest"] == mixed.sql("SELECT digest FROM snapshots WHERE name = 'pref'")["digest"][0]


def test_an_empty_eval_split_is_not_written(wh, tmp_path):
    """A tool fails on an empty split file (datasets: 'Instruction "test" corresponds to no data',
    LLaMA-Factory likewise), so a split that drew no row is left out, an earlier one removed."""
    from datasets import load_dataset

    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(3))))
    wh.create_snapshot("tiny")
    seed = next(s for s in range(50) if factory.export(wh, "tiny", tmp_path / f"x{s}", "openai", eval_split=0.05, seed=s)["counts"]["eval"] == 0)  # fmt: skip
    result = factory.export(wh, "tiny", tmp_path / "hf", "hf", eval_split=0.05, seed=seed)
    assert result["counts"] == {"train": 3, "eval": 0} and "eval" not in result["files"]
    assert set(load_dataset(str(tmp_path / "hf"))) == {"train"}
    assert "split: test" not in (tmp_path / "hf" / "README.md").read_text()
    other = next(s for s in range(50) if factory.export(wh, "tiny", tmp_path / f"y{s}", "openai", eval_split=0.5, seed=s)["counts"]["eval"] > 0)  # fmt: skip
    factory.export(wh, "tiny", tmp_path / "again", "openai", eval_split=0.5, seed=other)
    assert (tmp_path / "again" / "eval.jsonl").exists()
    factory.export(wh, "tiny", tmp_path / "again", "openai", eval_split=0.05, seed=seed, force=True)
    assert not (tmp_path / "again" / "eval.jsonl").exists()  # the earlier split does not linger


def test_pairs_exported_as_one_answer_are_counted_and_a_pairless_preference_export_refused(wh, tmp_path):
    from tests.factory.formats.test_import import PREFERENCE_MESSAGES

    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PREFERENCE_MESSAGES)))
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(4))))
    wh.create_snapshot("pairs", where="rejected IS NOT NULL")
    wh.create_snapshot("plain", where="rejected IS NULL")
    pairs = wh.sql("SELECT count(*) AS n FROM snapshot('pairs')")["n"][0]
    for fmt in ("openai", "trl", "alpaca"):
        assert factory.export(wh, "pairs", tmp_path / fmt, fmt)["left_out"] == {"rejected_answer": pairs}
    for fmt in ("preference", "sharegpt", "hf", "parquet"):
        assert factory.export(wh, "pairs", tmp_path / f"k{fmt}", fmt)["left_out"] == {}
    wh.create_snapshot("both")
    assert factory.export(wh, "both", tmp_path / "both", "preference")["skipped"] == {
        "skipped_no_rejected_answer": 4
    }
    with pytest.raises(ValueError, match="no preference pairs"):
        factory.export(wh, "plain", tmp_path / "none", "preference")
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="--openai-model applies to --format openai"):
        factory.export(wh, "plain", tmp_path / "m", "trl", openai_model="gpt-4o-2024-08-06")
    with pytest.raises(ValueError, match="unknown OpenAI model ''"):
        factory.export(wh, "plain", tmp_path / "m", "openai", openai_model="")
