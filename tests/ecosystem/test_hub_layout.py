"""The `hf` export is a folder the Hugging Face tools read as a user expects: `datasets.load_dataset`
finds the splits `train` and `test` (the held-out split is `test`: TRL's scripts read
`dataset_test_split="test"` by default, and `datasets` names a split by its file name), and the
dataset card's header parses with huggingface_hub's own card reader, with the fields the Hub shows."""

from __future__ import annotations

from pathlib import Path

import factory

HUB_SIZES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "n>100M"}


def test_hf_export_loads_with_its_splits_and_a_valid_card(ecosystem, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    result = factory.export(ecosystem, "sft", tmp_path / "sft", "hf", eval_split=0.1, license="cc-by-4.0")
    loaded = load_dataset(str(tmp_path / "sft"))
    assert set(loaded) == {"train", "test"}
    assert (loaded["train"].num_rows, loaded["test"].num_rows) == (
        result["counts"]["train"],
        result["counts"]["eval"],
    )
    first = loaded["train"][0]["messages"]
    assert {m["role"] for m in first} <= {"system", "user", "assistant"} and first[-1]["role"] == "assistant"

    card = DatasetCard.load(tmp_path / "sft" / "README.md")
    header = card.data.to_dict()
    assert header["license"] == "cc-by-4.0" and header["task_categories"] == ["text-generation"]
    assert set(header["size_categories"]) <= HUB_SIZES and isinstance(header.get("language", []), list)
    files = header["configs"][0]["data_files"]
    assert {f["split"] for f in files} == {"train", "test"}
    assert all((tmp_path / "sft" / f["path"]).is_file() for f in files)
    assert card.text.lstrip().startswith("# sft")

    factory.export(ecosystem, "pairs", tmp_path / "pairs", "hf")
    pairs = load_dataset(str(tmp_path / "pairs"))["train"]
    assert set(pairs.column_names) == {"id", "prompt", "chosen", "rejected"}
    assert pairs[0]["chosen"][0]["role"] == "assistant" and pairs[0]["prompt"][-1]["role"] == "user"
    assert "dpo" in DatasetCard.load(Path(tmp_path / "pairs" / "README.md")).data.to_dict()["tags"]
