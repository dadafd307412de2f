"""The preference generator on real local HTTP servers: RLAIF ranking and constitutional critique-revise."""

from __future__ import annotations

import json

import pytest

import factory
from generators import preference
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer

PROMPTS = [
    {"instruction": "Explain gravity", "input": "", "output": "x"},
    {"instruction": "Name a colour", "input": "", "output": "x"},
    {"instruction": "Tie break", "input": "", "output": "x"},
    {"instruction": "Confuse the judge", "input": "", "output": "x"},
]


def judge(prompt: str) -> str:
    body = prompt.split("### Instruction:\n")[1]
    if "Confuse the judge" in body:
        return "They are all fine."
    responses = body.split("### Response ")[1:]
    lines = []
    for part in responses:
        number, text = part.split(":\n", 1)
        score = 5 if "Tie break" in body else (9 if "good" in text else 2)
        lines.append(f"Response {number}: {score}")
    return "\n".join(lines) + "\nThe good one is accurate; the bad one is not."


def test_rank_makes_best_and_worst_a_pair(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PROMPTS)))
    wh.create_snapshot("prompts")
    good = ScriptedServer(lambda p: judge(p) if p.startswith("Rate each response") else f"good answer: {p}")
    bad = ScriptedServer(lambda p: f"bad answer: {p}")
    with good, bad:
        values = {"on": "prompts", "n": 1, "teacher.teacher": f"openai:good@{good.url}",
                  "more_teachers": [f"openai:bad@{bad.url}"]}  # fmt: skip
        summary = factory.generate(wh, "preference", **values)
        asked = good.requests + bad.requests
        again = factory.generate(wh, "preference", **values)
        assert good.requests + bad.requests == asked and again.inserted == 0  # all from the cache
    assert summary.accepted == 2 and summary.rejected == {"no_preference": 1, "judge_unparsed": 1}
    pairs = wh.sql(
        "SELECT instruction, output, rejected, kind, generator_params, parent_ids FROM rows WHERE generator = 'preference' AND kind = 'preference'"
    )
    for row in pairs.iter_rows(named=True):
        assert (
            row["output"] == f"good answer: {row['instruction']}"
            and row["rejected"] == f"bad answer: {row['instruction']}"
        )
        params = json.loads(row["generator_params"])
        assert params["scores"] == [9.0, 2.0] and params["teachers"] == ["openai:good", "openai:bad"]
        assert "accurate" in params["judge_reasons"] and len(row["parent_ids"]) == 1
    config = wh.sql("SELECT config FROM jobs WHERE plugin = 'preference'")["config"][0]
    assert "127.0.0.1" not in config and "openai:bad" in config
    snap = wh.create_snapshot("dpo", where="kind = 'preference' AND generator = 'preference'")
    exported = factory.export(wh, "dpo", tmp_path / "dpo", "preference")
    assert snap["row_count"] == 2 and exported["counts"]["train"] == 2


def critic(prompt: str) -> str:
    if prompt.startswith("Here is a request and a response."):
        return "It is too short and gives no reason."
    if "Rewrite the response" in prompt:
        request = prompt.split("Request: ")[1].split("\n")[0]
        return f"A fuller answer to {request}, with reasons."
    return f"draft: {prompt}"


def test_critique_revise_keeps_principle_and_critique(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])))
    wh.create_snapshot("prompts")
    principles = tmp_path / "constitution.txt"
    principles.write_text("Be helpful and give reasons.\n\nAvoid harm,\nand say when unsure.\n")
    with ScriptedServer(critic) as server:
        summary = factory.generate(
            wh, "preference", on="prompts", mode="critique_revise", principles=str(principles),
            **{"teacher.teacher": f"openai:c@{server.url}"},
        )  # fmt: skip
    assert summary.accepted == 2
    rows = wh.sql(
        "SELECT instruction, output, rejected, generator_params FROM rows WHERE kind = 'preference'"
    )
    for row in rows.iter_rows(named=True):
        assert row["rejected"] == f"draft: {row['instruction']}"
        assert row["output"] == f"A fuller answer to {row['instruction']}, with reasons."
        params = json.loads(row["generator_params"])
        assert params["principle"] in {"Be helpful and give reasons.", "Avoid harm, and say when unsure."}
        assert params["critique"] == "It is too short and gives no reason."
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no principles"):
        preference.read_principles(empty)
    with pytest.raises(ValueError, match="principles=FILE"):
        preference.PreferenceConfig(on="prompts", mode="critique_revise")


def test_scores_parser():
    assert preference.scores("Response 1: 7\nResponse 2 - 3.5\nresponse 1: 9", 2) == {1: 7.0, 2: 3.5}
    assert preference.scores("Response 3: 8", 2) == {}


def test_preference_on_the_tiny_model(wh, tmp_path, tiny_model):
    """The whole path on a real (random) model: every prompt ends as a pair or an explained rejection."""
    factory.import_file(wh, str(write_jsonl(tmp_path / "p.jsonl", PROMPTS)))
    wh.create_snapshot("prompts")
    small = {"max_tokens": 16, "temperature": 1.0}
    for mode, extra in (("rank", {"n": 2}), ("critique_revise", {"principles": str(tmp_path / "c.txt")})):
        (tmp_path / "c.txt").write_text("Be kind.\n")
        summary = factory.generate(
            wh, "preference", on="prompts", mode=mode, sampling=small, judge_sampling=small,
            **extra, **{"teacher.teacher": f"hf:{tiny_model}"},
        )  # fmt: skip
        assert summary.accepted + sum(summary.rejected.values()) == len(PROMPTS)
        assert summary.teacher_stats["calls"] > 0
        status = wh.sql(f"SELECT status FROM jobs WHERE id = '{summary.job_id}'")["status"][0]
        assert status == "succeeded"
    rejected = wh.sql("SELECT count(*) AS n FROM verdicts WHERE filter = 'preference' AND NOT keep")["n"][0]
    made = wh.sql("SELECT count(*) AS n FROM rows WHERE generator = 'preference' AND kind = 'preference'")[
        "n"
    ][0]
    assert rejected + made >= 1
