"""Human import: every format, field mapping, idempotent re-import, HF folders, templated import."""

from __future__ import annotations

import json

import polars as pl
import pytest

import factory
from tests.conftest import alpaca, write_jsonl

SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hello"},
            {"from": "gpt", "value": "Hi"},
            {"from": "human", "value": "Capital of France?"},
            {"from": "gpt", "value": "Paris."},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "task 1: say the number"},
            {"from": "gpt", "value": "The number is 1."},
        ]
    },
]
OPENAI = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Name a colour"},
            {"role": "assistant", "content": "Blue"},
            {"role": "user", "content": "Another"},
            {"role": "tool", "content": "lookup: green"},
            {"role": "assistant", "content": "Green"},
        ]
    },
]
PREFERENCE_MESSAGES = [
    {
        "prompt": [{"role": "user", "content": "Best sorting algorithm for small arrays?"}],
        "chosen": [{"role": "assistant", "content": "Insertion sort."}],
        "rejected": [{"role": "assistant", "content": "Bogosort."}],
    },
    {
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
    },
]


def test_alpaca_jsonl_detected_and_reimport_adds_nothing(wh, tmp_path):
    path = write_jsonl(tmp_path / "tasks.jsonl", alpaca(50))
    first = factory.import_file(wh, str(path), source="seeds")
    assert (first.format, first.offered, first.inserted) == ("alpaca", 50, 50)
    again = factory.import_file(wh, str(path), source="seeds")
    assert (again.offered, again.inserted, again.duplicates) == (50, 0, 50)
    rows = wh.sql("SELECT * FROM rows ORDER BY origin")
    assert rows.height == 50
    assert set(rows["source"]) == {"seeds"} and set(rows["generator"]) == {"human"}
    assert rows.filter(pl.col("origin") == f"{path}:1")["input"][0] == "n=0"
    assert rows["messages"].is_null().all() and set(rows["kind"]) == {"instruction"}
    jobs = wh.jobs()
    assert jobs.height == 2 and set(jobs["status"]) == {"succeeded"}
    assert json.loads(jobs.filter(pl.col("id") == again.job_id)["stats"][0])["inserted"] == 0


def test_sharegpt_conversation_shapes(wh, tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(SHAREGPT))
    summary = factory.import_file(wh, str(path), source="forum")
    assert summary.format == "sharegpt" and summary.inserted == 2
    multi = wh.sql("SELECT * FROM rows WHERE kind = 'conversation'").row(0, named=True)
    assert multi["system"] == "Be brief."
    assert multi["instruction"] == "Capital of France?" and multi["output"] == "Paris."
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user", "assistant"]
    single = wh.sql("SELECT * FROM rows WHERE kind = 'instruction'").row(0, named=True)
    assert single["messages"] is None and single["origin"] == f"{path}#2"


def test_same_exchange_in_two_formats_has_one_id(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(2))))
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(SHAREGPT))
    summary = factory.import_file(wh, str(path))
    assert summary.inserted == 1 and summary.duplicates == 1  # "task 1" exists as alpaca already


def test_openai_messages_with_system_and_tool(wh, tmp_path):
    summary = factory.import_file(wh, str(write_jsonl(tmp_path / "chat.jsonl", OPENAI)))
    assert summary.format == "openai" and summary.inserted == 2
    rows = wh.sql("SELECT * FROM rows ORDER BY origin")
    first, second = rows.row(0, named=True), rows.row(1, named=True)
    assert first["system"] == "You are terse." and first["messages"] is None and first["output"] == "4"
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user", "tool", "assistant"]
    assert second["instruction"] == "Another" and second["output"] == "Green"


def test_preference_with_map_plain_and_messages(wh, tmp_path):
    plain = pl.DataFrame({"question": ["Capital of Peru?"], "good": ["Lima."], "bad": ["Cusco."]})
    plain.write_parquet(tmp_path / "prefs.parquet")
    summary = factory.import_file(
        wh,
        str(tmp_path / "prefs.parquet"),
        format="preference",
        map="prompt=question,chosen=good,rejected=bad",
    )
    assert summary.inserted == 1
    factory.import_file(wh, str(write_jsonl(tmp_path / "pm.jsonl", PREFERENCE_MESSAGES)))
    rows = wh.sql("SELECT instruction, output, rejected, kind, messages FROM rows ORDER BY instruction")
    assert rows.to_dicts() == [
        {
            "instruction": "Best sorting algorithm for small arrays?",
            "output": "Insertion sort.",
            "rejected": "Bogosort.",
            "kind": "preference",
            "messages": None,
        },
        {
            "instruction": "Capital of Peru?",
            "output": "Lima.",
            "rejected": "Cusco.",
            "kind": "preference",
            "messages": None,
        },
        {
            "instruction": "Hi",
            "output": "Hello!",
            "rejected": "Go away.",
            "kind": "preference",
            "messages": None,
        },
    ]


def test_preference_mixing_string_prompts_and_message_answers(wh, tmp_path):
    records = [
        {
            "prompt": "Say hi",
            "chosen": [{"role": "assistant", "content": "Hi!"}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },
        {
            "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Greet me"}],
            "chosen": "Hello there!",
            "rejected": "Go away.",
        },
    ]
    summary = factory.import_file(wh, str(write_jsonl(tmp_path / "mixed.jsonl", records)))
    assert summary.inserted == 2
    rows = wh.sql("SELECT system, instruction, output, rejected FROM rows ORDER BY instruction").rows()
    assert rows == [("Be kind.", "Greet me", "Hello there!", "Go away."), ("", "Say hi", "Hi!", "No.")]
    # One type per column (the typed fast path): string prompts, message-list answers.
    typed = [
        {
            "prompt": f"Q{i}",
            "chosen": [{"role": "assistant", "content": f"A{i}"}],
            "rejected": [{"role": "assistant", "content": "?"}],
        }
        for i in range(3)
    ]
    assert factory.import_file(wh, str(write_jsonl(tmp_path / "typed.jsonl", typed))).inserted == 3
    assert wh.sql("SELECT output FROM rows WHERE instruction = 'Q2'")["output"][0] == "A2"


def test_map_names_a_missing_field(wh, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca(2))
    with pytest.raises(Exception, match=r"--map prompt=question: .*a\.jsonl has no field 'question'"):
        factory.import_file(wh, str(path), map="prompt=question")


def test_csv_and_hf_datasets_folder(wh, tmp_path):
    datasets = pytest.importorskip("datasets")
    pl.DataFrame(alpaca(5)).write_csv(tmp_path / "tasks.csv")
    assert factory.import_file(wh, str(tmp_path / "tasks.csv")).inserted == 5
    ds = datasets.Dataset.from_list(alpaca(8, prefix="hf"))
    ds.save_to_disk(str(tmp_path / "hf_folder"))
    summary = factory.import_file(wh, str(tmp_path / "hf_folder"), source="hf")
    assert (summary.format, summary.inserted) == ("alpaca", 8)
    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_list(alpaca(3, prefix="hft"))})
    dd.save_to_disk(str(tmp_path / "hf_dict"))
    assert factory.import_file(wh, str(tmp_path / "hf_dict")).inserted == 3  # train split is already there
    assert wh.count() == 16


def test_folder_of_jsonl_shards(wh, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "part-0.jsonl", alpaca(4, "a"))
    write_jsonl(folder / "part-1.jsonl", alpaca(4, "b"))
    assert factory.import_file(wh, str(folder)).inserted == 8


def test_text_normalisation_makes_ids_stable(wh, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi there", "output": "Hello"}])
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "  Hi there\r\n", "output": "Hello  ", "input": ""}])
    factory.import_file(wh, str(tmp_path / "a.jsonl"))
    assert factory.import_file(wh, str(tmp_path / "b.jsonl")).inserted == 0
    # Unicode spaces count too, even when no other row of the batch needs stripping.
    write_jsonl(tmp_path / "c.jsonl", [{"instruction": "Hi there\u00a0", "output": "\u2003Hello"}])
    assert factory.import_file(wh, str(tmp_path / "c.jsonl")).inserted == 0


def test_templated_import_random_and_all(wh, tmp_path):
    task = tmp_path / "nli.yaml"
    task.write_text(
        "task: nli\n"
        "templates:\n"
        "  - name: implies\n"
        '    instruction: "{{ premise }}\\nDoes this imply: {{ hypothesis }}?"\n'
        "    output: \"{{ ['yes', 'maybe', 'no'][label | int] }}\"\n"
        "  - name: options\n"
        '    instruction: "Premise: {{ premise }}\\nHypothesis: {{ hypothesis }}\\nAnswer yes, maybe or no."\n'
        "    output: \"{{ ['yes', 'maybe', 'no'][label | int] }}\"\n"
    )
    rows = [{"premise": f"A dog runs {i}", "hypothesis": "An animal moves", "label": i % 3} for i in range(6)]
    data = write_jsonl(tmp_path / "nli.jsonl", rows)
    summary = factory.import_file(wh, str(data), templates=str(task), seed=1)
    assert summary.inserted == 6
    out = wh.sql(
        "SELECT generator, generator_params, template_hash, output, origin FROM rows ORDER BY origin"
    )
    assert set(out["generator"]) == {"templated"}
    params = [json.loads(p) for p in out["generator_params"]]
    assert {p["task"] for p in params} == {"nli"} and {p["template"] for p in params} <= {
        "implies",
        "options",
    }
    assert out["output"].to_list() == ["yes", "maybe", "no", "yes", "maybe", "no"]
    wh2 = factory.init(tmp_path / "wh2")
    again = factory.import_file(wh2, str(data), templates=str(task), seed=1, batch_rows=2)
    same = wh2.sql("SELECT generator_params FROM rows ORDER BY origin")["generator_params"].to_list()
    assert again.inserted == 6 and same == out["generator_params"].to_list()  # seeded, batch-independent
    everything = factory.import_file(wh2, str(data), templates=str(task), template_mode="all")
    assert everything.offered == 12 and everything.inserted == 6
    assert wh2.count() == 12


def test_templated_import_names_a_missing_field(wh, tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text(
        "task: t\ntemplates:\n  - name: a\n    instruction: '{{ question }}'\n    output: '{{ answer }}'\n"
    )
    data = write_jsonl(
        tmp_path / "q.jsonl", [{"question": "Why?", "answer": "Because."}, {"question": "How?"}]
    )
    with pytest.raises(Exception, match=r"q\.jsonl:2: template 'a': 'answer' is undefined"):
        factory.import_file(wh, str(data), templates=str(task))
    assert wh.count() == 0


def test_large_batches_stream(wh, tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", alpaca(5000))
    summary = factory.import_file(wh, str(path), batch_rows=1000)
    assert summary.inserted == 5000
    assert wh.sql("SELECT max(origin) AS m FROM rows WHERE origin LIKE '%:5000'")["m"][0] == f"{path}:5000"


def test_row_id_is_sha256_of_the_documented_record(wh, tmp_path):
    import hashlib

    write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": "Add", "input": "2+2", "output": "4", "system": "Be exact."}]
    )
    write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Ciao"},
                ]
            }
        ],
    )
    factory.import_file(wh, str(tmp_path / "a.jsonl"))
    factory.import_file(wh, str(tmp_path / "c.jsonl"))
    us, rs = "\x1f", "\x1e"
    single = f"Be exact.{rs}user{us}Add\n\n2+2{rs}assistant{us}4{rs}"
    multi = f"{rs}user{us}Hi{rs}assistant{us}Hello{rs}user{us}Bye{rs}assistant{us}Ciao{rs}"
    expected = {hashlib.sha256(text.encode()).hexdigest()[:32] for text in (single, multi)}
    assert set(wh.sql("SELECT id FROM rows")["id"]) == expected


def test_repeated_records_in_one_file_land_once_first_copy_wins(wh, tmp_path):
    records = alpaca(4)
    path = write_jsonl(tmp_path / "dup.jsonl", [*records, records[1], records[1]])
    summary = factory.import_file(wh, str(path), batch_rows=2)  # the copies fall in other batches
    assert (summary.offered, summary.inserted, summary.duplicates) == (6, 4, 2)
    origins = wh.sql("SELECT origin FROM rows ORDER BY origin")["origin"].to_list()
    assert origins == [f"{path}:{n}" for n in (1, 2, 3, 4)]
    assert not list((wh.folder / ".staging").iterdir())
