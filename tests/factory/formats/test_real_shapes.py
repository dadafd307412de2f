"""Importing data in the shapes public instruction data comes in (tests/data/realistic, see make_corpus.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import factory
from factory.formats import loading
from factory.formats.readers import ReadError
from generators.human import ImportFailed
from tests.conftest import write_jsonl

DATA = Path(__file__).parents[2] / "data" / "realistic"


def test_self_instruct_seed_tasks_import_a_row_per_instance_with_no_flag(wh):
    summary = factory.import_file(wh, DATA / "tasks" / "seed_tasks.jsonl")
    tasks = [json.loads(line) for line in (DATA / "tasks" / "seed_tasks.jsonl").read_text().splitlines()]
    assert summary.inserted == sum(len(t["instances"]) for t in tasks)
    rows = wh.sql(
        "SELECT instruction, input, output, meta->>'id' AS task, meta->>'name' AS name, "
        "CAST(meta->>'is_classification' AS BOOLEAN) AS cls, origin_line FROM rows ORDER BY origin"
    )
    parity = rows.filter(rows["name"] == "number_parity")
    assert parity["input"].to_list() == ["612", "3", "7001"] and parity["output"].to_list() == [
        "Even",
        "Odd",
        "Odd",
    ]
    assert set(parity["task"]) == {"seed_task_6"} and parity["cls"].to_list() == [True] * 3
    assert set(parity["origin_line"]) == {7}
    assert not any("instances" in m for m in wh.sql("SELECT meta FROM rows")["meta"].to_list())


def test_super_ni_definition_is_the_instruction_and_each_output_its_own_row(wh):
    summary = factory.import_file(wh, DATA / "tasks" / "super_ni_task.json")
    rows = wh.sql("SELECT instruction, input, output, meta FROM rows ORDER BY origin, output")
    assert summary.inserted == 5  # four instances, one of them with two outputs
    assert set(rows["instruction"]) == {
        json.loads((DATA / "tasks" / "super_ni_task.json").read_text())["Definition"][0]
    }
    twice = rows.filter(rows["input"].str.starts_with("Beautiful photography"))
    assert sorted(twice["output"]) == ["NEG", "POS"]
    meta = json.loads(twice["meta"][0])
    assert meta["id"] == "task9999-3" and meta["Categories"] == ["Sentiment Analysis"]
    assert "Positive Examples" not in meta  # not copied per row, and said so:
    assert any("Positive Examples" in w and "--explode" in w for w in summary.warnings)


def test_explode_flag_imports_a_chosen_list_field(wh):
    summary = factory.import_file(wh, DATA / "tasks" / "super_ni_task.json", explode="Positive Examples")
    rows = wh.sql("SELECT input, output, meta->>'explanation' AS why FROM rows")
    assert summary.inserted == 1 and rows.row(0) == ("A moving film with a brilliant cast.", "POS", "Praise.")


def test_map_reaches_nested_fields_and_builds_a_field_from_several(wh, tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text(
        json.dumps({"task": {"text": "Add the numbers.", "args": "2 and 3"}, "answers": [{"output": "5"}]})
        + "\n"
    )
    factory.import_file(
        wh, path, map={"instruction": "{task.text}\\n\\nNumbers: {task.args}", "output": "answers[0].output"}
    )
    assert wh.sql("SELECT instruction, output, meta FROM rows").row(0) == (
        "Add the numbers.\n\nNumbers: 2 and 3",
        "5",
        None,
    )


def test_map_on_the_command_line_takes_a_template_with_commas(wh, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "Why, exactly?", "ctx": "Because.", "a": "So."}) + "\n")
    cli = [sys.executable, "-m", "factory.cli", "import", str(path), "--warehouse", str(wh.folder)]
    done = subprocess.run(
        [*cli, "--map", "instruction=Q: {q}, context: {ctx},output=a"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert factory.open(wh.folder).sql("SELECT instruction, output FROM rows").row(0) == (
        "Q: Why, exactly?, context: Because.",
        "So.",
    )


def test_extra_fields_are_kept_as_meta_outside_the_row_id(wh):
    factory.import_file(wh, DATA / "templated", on_error="skip")
    counts = wh.sql(
        "SELECT meta->>'category' AS category, count(*) AS n, count(DISTINCT meta->>'id') AS ids FROM rows "
        "GROUP BY 1 ORDER BY 1"
    )
    assert counts.rows() == [("headline", 30, 30), ("reading_comprehension", 50, 50), ("sentiment", 72, 72)]
    assert wh.sql("SELECT count(*) AS n FROM rows WHERE meta->>'app_name' = 'shop-reviews'")["n"][0] == 72
    before = wh.count()
    # the same records with other ids are the same rows: meta is not part of the row id
    again = factory.import_file(wh, DATA / "templated" / "reviews_template_0.jsonl")
    assert again.inserted == 0 and again.known == 12 and wh.count() == before


def test_end_of_text_tokens_are_stripped_counted_and_an_empty_completion_rejected(wh, tmp_path):
    with pytest.raises(ImportFailed, match=r"openai_style_0\.jsonl:9: field 'completion'.*empty_field"):
        factory.import_file(wh, DATA / "finetune")
    assert wh.count() == 0
    summary = factory.import_file(wh, DATA / "finetune", on_error="skip")
    assert summary.rejected == 4 and summary.inserted == 8 and summary.repeated == 24
    outputs = wh.sql("SELECT output FROM rows")["output"].to_list()
    assert not [o for o in outputs if "<|" in o or "</s>" in o or o != o.strip()]
    stripped = [w for w in summary.warnings if "end-of-text" in w]
    assert len(stripped) == 4 and all("9 answer(s)" in w for w in stripped)  # 8 rows and the emptied one
    assert any("<|eot_id|> 9" in w for w in stripped)


def test_keep_special_tokens_keeps_them(wh):
    factory.import_file(wh, DATA / "finetune" / "openai_style_1.jsonl", keep_special_tokens=True)
    outputs = wh.sql("SELECT output FROM rows")["output"].to_list()
    assert len(outputs) == 9 and all(o.endswith("</s>") for o in outputs)


def test_tokens_in_conversations_and_preference_pairs_are_stripped(wh, tmp_path):
    chat = tmp_path / "chat.jsonl"
    turns = [
        ("user", "Hi"),
        ("assistant", "Hello!<|im_end|>"),
        ("user", "Bye"),
        ("assistant", "Goodbye. <|im_end|>\n"),
    ]
    chat.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "2+2?", "chosen": "4</s>", "rejected": "5 </s>"}) + "\n")
    factory.import_file(wh, [chat, prefs])
    row = wh.sql("SELECT output, messages FROM rows WHERE messages IS NOT NULL").row(0)
    assert row[0] == "Goodbye." and [m["content"] for m in row[1]] == ["Hi", "Hello!", "Bye", "Goodbye."]
    assert wh.sql("SELECT output, rejected FROM rows WHERE kind = 'preference'").row(0) == ("4", "5")


def test_several_paths_and_globs_in_one_import_are_one_commit(wh):
    summary = factory.import_file(
        wh, [str(DATA / "templated" / "news_*.jsonl"), DATA / "tasks" / "seed_tasks.jsonl"]
    )
    assert summary.files == 6 and summary.inserted == 30 + 11
    assert wh.sql("SELECT count(DISTINCT job_id) AS n FROM rows")["n"][0] == 1
    assert set(wh.sql("SELECT DISTINCT source FROM rows")["source"]) == {
        f"news_template_{k}" for k in range(5)
    } | {"seed_tasks"}
    with pytest.raises(ReadError, match=r"nothing_\*\.jsonl: no file matches this pattern"):
        factory.import_file(wh, [str(DATA / "templated" / "nothing_*.jsonl")])


def test_empty_files_in_a_folder_stop_the_import_up_front_or_are_skipped_with_a_warning(wh, tmp_path):
    folder = shutil.copytree(DATA / "templated", tmp_path / "templated")
    with (folder / "reviews_template_0.jsonl").open("a") as handle:
        handle.write('{"instruction": "no output"}\n')  # a bad record after the empties
    with pytest.raises(
        ReadError, match=r"2 empty files: .*blank_lines\.jsonl, .*empty_split\.jsonl; nothing was imported"
    ):
        factory.import_file(wh, folder)  # named before any record is read (else the bad record would be)
    summary = factory.import_file(wh, folder, on_error="skip")
    assert [w for w in summary.warnings if "empty" in w] == [
        f"{folder / 'blank_lines.jsonl'}: the file is empty; skipped",
        f"{folder / 'empty_split.jsonl'}: the file is empty; skipped",
    ]
    assert summary.rejected == 1


def test_origin_is_split_into_file_and_line_relative_to_the_folder(wh):
    factory.import_file(wh, DATA / "templated", on_error="skip")
    per_file = wh.sql(
        "SELECT origin_file, count(*) AS n, max(origin_line) AS last FROM rows GROUP BY 1 ORDER BY 1"
    )
    assert per_file["origin_file"].to_list()[:2] == ["news_template_0.jsonl", "news_template_1.jsonl"]
    assert per_file.filter(per_file["origin_file"] == "qa_template_0.jsonl").row(0)[1:] == (10, 10)


def test_duplicates_inside_the_import_are_told_apart_from_rows_already_there(wh, tmp_path):
    line = json.dumps({"instruction": "Same", "output": "row"}) + "\n"
    path = tmp_path / "dups.jsonl"
    path.write_text(line * 5 + json.dumps({"instruction": "Other", "output": "row"}) + "\n")
    cli = [sys.executable, "-m", "factory.cli", "import", str(path), "--warehouse", str(wh.folder)]
    first = subprocess.run(cli, capture_output=True, text=True)
    assert "2 new row(s); 4 duplicate(s) inside this import;" in first.stdout, first.stdout
    assert "already in the warehouse" not in first.stdout
    second = subprocess.run(cli, capture_output=True, text=True)
    assert "0 new row(s); 4 duplicate(s) inside this import; 2 already in the warehouse" in second.stdout


def test_a_mixed_folder_error_suggests_a_command_that_works(wh, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    (folder / "b.csv").write_text("instruction,output\nc,d\n")
    with pytest.raises(ReadError, match="mixes kinds") as caught:
        factory.import_file(wh, folder)
    assert "each file on its own" in str(caught.value)
    summary = factory.import_file(wh, [folder / "a.jsonl", folder / "b.csv"])  # ... which works
    assert summary.inserted == 2


def test_prediction_files_import_with_the_documented_one_liner(wh):
    summary = factory.import_file(
        wh, DATA / "predictions.jsonl", map={"instruction": "prompt", "output": "reference"}
    )
    rows = wh.sql(
        "SELECT instruction, output, meta->>'response' AS response, meta->>'model' AS model FROM rows"
    )
    assert summary.inserted == 4
    assert rows.filter(rows["instruction"] == "Who wrote Hamlet?").row(0)[1:] == (
        "William Shakespeare",
        "Hamlet was written by Shakespeare.",
        "tiny-chat-v1",
    )


def test_preference_files_import_with_the_documented_one_liner(wh, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(
        json.dumps({"question": "Capital of France?", "good": "Paris.", "bad": "Lyon.", "annotator": 7})
        + "\n"
    )
    factory.import_file(wh, path, map={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert wh.sql("SELECT kind, instruction, output, rejected, meta FROM rows").row(0) == (
        "preference",
        "Capital of France?",
        "Paris.",
        "Lyon.",
        '{"annotator":7}',
    )


def test_eval_sets_read_through_the_same_loader_never_come_out_empty():
    rows, problems = loading.read_rows(DATA / "tasks" / "seed_tasks.jsonl", loading.Settings())
    assert not problems and rows.height == 11 and (rows["output"].str.len_chars() > 0).all()
    preds, _ = loading.read_rows(
        DATA / "predictions.jsonl", loading.Settings(map={"instruction": "prompt", "output": "reference"})
    )
    assert preds["instruction"].to_list()[0] == "What is 12 * 12?"


def test_odd_inputs_are_kept_or_refused_with_a_reason(wh, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"instruction": ["a", "b"], "output": ["x", "y"], "blob": pa.array([b"\x00\xff", b"abc"])}),
        tmp_path / "binary.parquet",
    )
    assert factory.import_file(wh, tmp_path / "binary.parquet").inserted == 2  # bytes kept in meta, no crash
    assert wh.sql("SELECT count(*) AS n FROM rows WHERE meta->>'blob' IS NOT NULL")["n"][0] == 2
    bad_task = tmp_path / "task.json"
    bad_task.write_text(json.dumps({"Definition": [1, 2], "Instances": [{"input": "x", "output": ["y"]}]}))
    with pytest.raises(
        ImportFailed,
        match=r"task\.json#1: field 'Definition': must be a string or a list of strings \[non_string\]",
    ):
        factory.import_file(wh, bad_task)
    colon = tmp_path / "colon.csv"
    colon.write_text("prompt,c:d\nWhat is 2+2?,4\n")
    assert factory.import_file(wh, colon, map={"instruction": "prompt", "output": "c:d"}).inserted == 1
    typo = tmp_path / "typo.jsonl"
    typo.write_text(json.dumps({"instruction": "Q", "output": "A", "answers": ["B"]}) + "\n")
    with pytest.raises(
        ImportFailed, match=r"field 'output': is missing"
    ):  # not silently the file's own output
        factory.import_file(wh, typo, map={"output": "answers[5]"})


def test_a_rows_file_with_meta_that_is_not_an_object_keeps_it_inside_one(wh, tmp_path):
    path = tmp_path / "rows.jsonl"
    record = {"id": "x", "kind": "instruction", "instruction": "Q", "output": "A", "messages": None}
    path.write_text(
        json.dumps({**record, "meta": "notjson"})
        + "\n"
        + json.dumps({**record, "instruction": "R", "meta": '{"k": 1}'})
        + "\n"
    )
    factory.import_file(wh, path, format="rows")
    assert wh.sql("SELECT meta->>'meta' AS a, meta->>'k' AS b FROM rows ORDER BY instruction").rows() == [
        ("notjson", None),
        (None, "1"),
    ]


def test_the_warehouse_own_files_are_not_imported(wh, tmp_path):
    factory.import_file(wh, DATA / "predictions.jsonl", map={"instruction": "prompt", "output": "reference"})
    with pytest.raises(ReadError, match="a file of the warehouse itself"):
        factory.import_file(wh, [str(wh.folder / "**" / "*.parquet")], format="rows")


def test_an_emptied_rejected_answer_is_named_as_such(wh, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": "good</s>", "rejected": "</s>"}) + "\n")
    with pytest.raises(
        ImportFailed, match=r"field 'rejected': is empty once the end-of-text token is removed"
    ):
        factory.import_file(wh, path)


def test_bytes_anywhere_in_a_parquet_column_are_kept_in_meta(wh, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "instruction": ["a"],
            "output": ["x"],
            "blobs": pa.array([[b"\x00", b"\xff"]], type=pa.list_(pa.binary())),
            "nested": pa.array([{"b": b"z"}]),
        }
    )
    pq.write_table(table, tmp_path / "nested_bytes.parquet")
    factory.import_file(wh, tmp_path / "nested_bytes.parquet")
    meta = json.loads(wh.sql("SELECT meta FROM rows")["meta"][0])
    assert set(meta) == {"blobs", "nested"}


def test_a_rename_onto_a_field_the_file_has_keeps_the_replaced_value_in_meta(wh, tmp_path):
    path = tmp_path / "both.jsonl"
    path.write_text(json.dumps({"instruction": "Q", "output": "own", "alt": "better"}) + "\n")
    factory.import_file(wh, path, map={"output": "alt"})
    assert wh.sql("SELECT output, meta->>'original_output' AS was FROM rows").row(0) == ("better", "own")
    other = tmp_path / "own_only.jsonl"
    other.write_text(json.dumps({"instruction": "R", "output": "own"}) + "\n")
    summary = factory.import_file(
        wh, other, map={"output": "alt"}
    )  # no `alt`: its own output, and it is told
    assert any(
        "no field 'alt' for --map output=alt; its own 'output' was used" in w for w in summary.warnings
    )


def test_a_jsonl_file_mixing_alpaca_messages_and_sharegpt_records_reads_each_as_its_own(wh, tmp_path):
    """Collections glued from several sources hold alpaca records beside chat ones in one file:
    each record is read as the format its fields fit, in the file's order; one that fits none is
    rejected naming its line; the summary says the file mixes formats, with counts."""
    records, expected = [], []
    for k in range(90):
        if k % 3 == 0:
            records.append({"instruction": f"Sum {k} and 2", "input": f"numbers {k}", "output": f"{k + 2}"})
            expected.append(("instruction", f"Sum {k} and 2", f"{k + 2}", 0))
        elif k % 3 == 1:
            turns = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Name city {k}"},
                {"role": "assistant", "content": f"City {k}"},
                {"role": "user", "content": "And its river?"},
                {"role": "assistant", "content": f"River {k}"},
            ]
            records.append({"messages": turns, "source_id": k})
            expected.append(("conversation", "And its river?", f"River {k}", 4))
        else:
            conv = [{"from": "human", "value": f"Tell me fact {k}"}, {"from": "gpt", "value": f"Fact {k}."}]
            records.append({"conversations": conv, "id": f"sg-{k}"})
            expected.append(("instruction", f"Tell me fact {k}", f"Fact {k}.", 0))
    records.insert(40, {"instruction": "no answer here"})  # fits no format: rejected, by line
    path = write_jsonl(tmp_path / "glued.jsonl", records)

    summary = factory.import_file(wh, path, on_error="skip")
    assert summary.inserted == 90
    assert any("mixes formats" in w and "alpaca 30" in w and "openai 30" in w and "sharegpt 30" in w
               for w in summary.warnings), summary.warnings  # fmt: skip
    rows = wh.sql(
        "SELECT kind, instruction, output, len(messages) AS turns, origin_line, system, "
        "generator_params->>'format' AS fmt FROM rows ORDER BY rowid"
    )
    got = [
        (k, i, o, t or 0) for k, i, o, t in rows.select("kind", "instruction", "output", "turns").iter_rows()
    ]
    assert got == expected  # each record's own shape, in the file's order (keep=first dedup relies on it)
    assert rows["origin_line"].to_list() == [n for n in range(1, 92) if n != 41]
    assert set(rows["fmt"]) == {"alpaca", "openai", "sharegpt"}
    assert set(rows.filter(rows["fmt"] == "openai")["system"]) == {"Be brief."}
    # meta holds each record's own extra fields, not the other formats' (null) ones
    meta = dict(
        wh.sql("SELECT generator_params->>'format' AS fmt, list(DISTINCT meta) FROM rows GROUP BY 1").rows()
    )
    assert meta["alpaca"] == [None]
    assert sorted(meta["openai"]) == sorted(f'{{"source_id":{k}}}' for k in range(1, 90, 3))
    assert sorted(meta["sharegpt"]) == sorted(f'{{"id":"sg-{k}"}}' for k in range(2, 90, 3))
    report = Path(summary.rejects_path).read_text()
    assert "glued.jsonl:41,output,missing_field" in report, report  # judged as the alpaca record it nearly is
