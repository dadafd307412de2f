"""The reflect generator (survey Algorithm 1): retrieval, the loop's alignment matrix and its stop rules,
on real local HTTP servers, the bundled MiniLM and the tiny in-process model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import factory
from factory.formats.readers import ReadError
from factory.models.embeddings import encode
from generators import _alignment as drawing
from generators import reflect
from tests.conftest import write_jsonl

PLANTS = (
    "Photosynthesis happens in the chloroplasts of plant leaves. Chlorophyll absorbs sunlight.\n\n"
    "The light energy splits water and the plant builds sugar (glucose) from carbon dioxide, "
    "releasing oxygen as a by-product."
)
ROME = (
    "The Western Roman Empire fell in 476 when Odoacer deposed the last emperor.\n\n"
    "Historians name many causes: economic decline, overreliance on mercenaries, political "
    "instability and pressure from migrating peoples."
)
BREAD = "Knead the dough for ten minutes, let it rise for an hour, then bake it at 220 degrees."
PROMPTS = [
    {"instruction": "Explain how plants turn sunlight into sugar", "output": "x"},
    {"instruction": "Why did the Western Roman Empire fall?", "output": "x"},
    {"instruction": "Fail me", "output": "x"},
]
LEVELS = ["easy", "medium", "hard", "expert"]


def teacher(prompt: str) -> str:
    if prompt.startswith("You are a teacher"):
        level = re.search(r"Ask one (\w+) question", prompt).group(1)
        instruction = prompt.split("instruction:\n")[1].split("\n")[0]
        round_ = min(prompt.split("The student's current response:")[1].count("revised"), 3)
        return f"Round {round_} {level} question: {instruction}?"
    if prompt.startswith("A student answered"):
        if "expert question" in prompt:
            return "I cannot judge this one."  # no score: quality 0
        round_ = int(re.search(r"Round (\d)", prompt).group(1))
        return f"Score: {4 + 2 * round_}\nName the key step explicitly."
    raise AssertionError(prompt[:80])


def student(prompt: str) -> str:
    if prompt.startswith("Use the context"):
        return "" if "Fail me" in prompt else "draft"
    if prompt.startswith("Context:"):
        return "My answer to: " + prompt.split("Question: ")[1].split("\n")[0]
    if prompt.startswith("Instruction:"):
        return "revised " + prompt.split("Your response:\n")[1].split("\n")[0]
    raise AssertionError(prompt[:80])


@pytest.fixture
def documents(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "plants.txt").write_text(PLANTS)
    (folder / "bread.md").write_text(BREAD)
    write_jsonl(folder / "history.jsonl", [{"text": ROME}])
    return folder


def test_loop_alignment_matrix_convergence_and_rerun(wh, tmp_path, documents):
    from tests.servers import ScriptedServer

    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PROMPTS)))
    wh.create_snapshot("prompts")
    with ScriptedServer(teacher) as t, ScriptedServer(student) as s:
        values = {"on": "prompts", "documents": str(documents), "iterations": 10, "levels": LEVELS,
                  "teacher.teacher": f"openai:teach@{t.url}", "student": f"openai:learn@{s.url}"}  # fmt: skip
        summary = factory.generate(wh, "reflect", **values)
        asked = t.requests + s.requests
        again = factory.generate(wh, "reflect", **values)
        assert t.requests + s.requests == asked and again.inserted == 0  # every call from the cache
        short = factory.generate(wh, "reflect", **{**values, "iterations": 3})
    assert summary.accepted == 2 and summary.rejected == {"student_failed": 1}
    rows = wh.sql(
        "SELECT id, instruction, input, output, generator_params, parent_ids FROM rows "
        f"WHERE job_id = '{summary.job_id}' AND generator = 'reflect' ORDER BY instruction"
    )
    dropped = wh.sql(f"SELECT id, reason FROM verdicts WHERE run_id = '{summary.job_id}' AND NOT keep")
    assert dropped["reason"].to_list() == ["student_failed no first response"]
    rows = rows.filter(~rows["id"].is_in(dropped["id"].to_list()))
    for row in rows.iter_rows(named=True):
        params = json.loads(row["generator_params"])
        matrix = np.array(params["alignment"])
        # rounds 0..3 change the questions; round 3 comes twice, so A[:,4] == A[:,3]: converged at t5
        assert matrix.shape == (4, 5) and params["converged"] and params["iterations"] == 5
        assert (matrix[3] == 0).all() and (matrix[:3] > 0).all()  # expert: the teacher gave no score
        assert np.allclose(matrix[:, 4], matrix[:, 3])
        last = params["last"]
        cosines = encode([e["answer"] for e in last]) @ encode([row["instruction"]])[0]
        expected = [c * (e["score"] or 0) / 10 for c, e in zip(cosines, last, strict=True)]
        assert np.allclose(matrix[:, -1], expected, atol=1e-5)
        assert [e["score"] for e in last] == [10.0, 10.0, 10.0, None]
        assert row["output"] == "revised " * 5 + "draft" and params["first_response"] == "draft"
        wanted = "plants.txt" if "plants" in row["instruction"] else "history.jsonl:1"
        assert params["documents"][0].endswith(wanted) and len(row["parent_ids"]) == 1
        assert (PLANTS if "plants" in row["instruction"] else ROME).split("\n")[0] in row["input"]
    capped = json.loads(
        wh.sql(f"SELECT generator_params FROM rows WHERE job_id = '{short.job_id}' LIMIT 1")[
            "generator_params"
        ][0]
    )
    assert np.array(capped["alignment"]).shape == (4, 3) and not capped["converged"]
    config = wh.sql(f"SELECT config FROM jobs WHERE id = '{summary.job_id}'")["config"][0]
    assert "127.0.0.1" not in config and "openai:learn" in config

    found = drawing.alignment(wh, rows["id"][0][:10])
    assert found.levels == LEVELS and len(found.matrix[0]) == 5
    wh.close()
    png = tmp_path / "map.png"
    cli = [sys.executable, "-m", "factory.cli", "alignment", rows["id"][0], "--png", str(png),
           "--warehouse", str(tmp_path / "wh")]  # fmt: skip
    shown = subprocess.run(
        cli, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"}
    )
    assert shown.returncode == 0, shown.stderr
    assert "expert" in shown.stdout and "t5" in shown.stdout and f"{found.matrix[0][0]:.2f}" in shown.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = subprocess.run([*cli[:4], "nosuchrow", *cli[7:]], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "no row has this id" in other.stderr + other.stdout


def test_preprocess_keeps_paragraphs_whole_when_they_fit():
    text = "a b c d e f\n\ng h i j k\n\n" + " ".join(f"w{i}" for i in range(25))
    chunks = reflect.preprocess("doc", text, chunk_words=10)
    assert chunks[0].text == "a b c d e f" and chunks[1].text.startswith("g h i j k w0")  # g..k would not fit
    assert all(len(c.text.split()) <= 10 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()  # nothing lost, order kept


def test_retrieval_takes_each_documents_best_chunks(documents):
    cfg = reflect.ReflectConfig(
        file=documents / "plants.txt", documents=documents, top_k=1, min_similarity=0.3
    )
    chunks = [c for name, t in reflect.read_documents(documents) for c in reflect.preprocess(name, t, 20)]
    [(context, sources)] = reflect.retrieve(["How do leaves make glucose from light?"], chunks, cfg)
    assert sources == [str(documents / "plants.txt")]  # bread and Rome fall below the threshold
    assert "sugar" in context and "Odoacer" not in context


def test_bad_documents_are_named(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ReadError, match=r"d.jsonl:2: field 'text'"):
        reflect.read_documents(tmp_path / "d.jsonl")
    with pytest.raises(ReadError, match="documents not found"):
        reflect.read_documents(tmp_path / "missing")
    with pytest.raises(ValueError, match="difficulty level"):
        reflect.ReflectConfig(file=tmp_path / "d.jsonl", documents=tmp_path, levels=[])


def test_convergence_rule_is_eq_32():
    assert not reflect.converged([[0.5, 0.5]], 0.05)
    assert reflect.converged([[0.5, 0.5], [0.52, 0.53]], 0.05)  # ||(0.02, 0.03)|| = 0.036
    assert not reflect.converged([[0.5, 0.5], [0.54, 0.54]], 0.05)  # 0.057
    assert reflect.score("score: 7\nok") == 7.0 and reflect.score("fine") is None


def test_reflect_on_the_tiny_model(wh, tmp_path, tiny_model, documents):
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])))
    wh.create_snapshot("prompts")
    small = {"max_tokens": 12, "temperature": 1.0}
    summary = factory.generate(
        wh, "reflect", on="prompts", documents=str(documents), iterations=2, levels=["easy", "hard"],
        sampling=small, judge_sampling=small, student=f"hf:{tiny_model}",
        **{"teacher.teacher": f"hf:{tiny_model}"},
    )  # fmt: skip
    assert summary.accepted + sum(summary.rejected.values()) == 2 and summary.teacher_stats["calls"] > 0
    assert wh.sql(f"SELECT status FROM jobs WHERE id = '{summary.job_id}'")["status"][0] == "succeeded"
    for params in wh.sql("SELECT generator_params FROM rows WHERE generator = 'reflect'")["generator_params"]:
        matrix = json.loads(params)["alignment"]
        assert len(matrix) == 2 and 1 <= len(matrix[0]) <= 2
