"""The eval-feedback loop: a real tiny training run's held-out metrics steer distill and Self-Instruct
(served by a scripted OpenAI-compatible server on 127.0.0.1), the job records the run and the weights,
and new rows are decontaminated against a test set."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

import factory
from factory.errors import ConfigError, NotFound
from factory.runners import focus, training
from factory.shares import apportion
from generators import self_instruct as si
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer
from tests.tiny_model import WORDS, build

# A test-set item long enough to share a 12-word n-gram with a row that repeats it.
LEAKED = "the river city keeps a short list of every rain story told in the long first winter"
POOL_PER_DOMAIN = 20


def _training_rows(domains: tuple[str, ...]) -> list[dict]:
    """Domains of unequal difficulty: one fixed answer, random words, random symbols."""
    rng = random.Random(0)
    answers = {
        "facts": lambda i: "The number is seven.",
        "poetry": lambda i: " ".join(rng.choices(WORDS, k=12)),
        "codes": lambda i: "".join(rng.choices("qzx#$%&@!~^0123456789", k=20)),
    }
    return [
        {"instruction": f"Train {d} task {i}", "output": answers[d](i), "domain": d}
        for i in range(24)
        for d in domains
    ]


def _train(wh, model, snapshot: str, eval_split: float = 0.25) -> str:
    values = {"model": str(model), "method": "full", "max_steps": 16, "batch_size": 8,
              "learning_rate": 1e-2, "eval_split": eval_split}  # fmt: skip
    evaluation = training.EvalSettings(eval_split=eval_split, max_new_tokens=4) if eval_split else None
    return training.train(wh, snapshot, "sft", values, evaluation=evaluation)["id"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return build(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model):
    """A warehouse with a trained run over three domains and a prompt pool in four."""
    folder = tmp_path_factory.mktemp("focus")
    wh = factory.init(folder / "wh")
    factory.import_file(
        wh, str(write_jsonl(folder / "train.jsonl", _training_rows(("facts", "poetry", "codes"))))
    )
    wh.create_snapshot("train", where="instruction LIKE 'Train %'")
    run_id = _train(wh, model, "train")
    pool = [
        {"instruction": f"Pool {d} prompt {i}: write about the {WORDS[i]}", "output": "x", "domain": d}
        for d in ("facts", "poetry", "codes", "travel")
        for i in range(POOL_PER_DOMAIN)
    ]
    factory.import_file(wh, str(write_jsonl(folder / "pool.jsonl", pool)))
    wh.create_snapshot("pool", where="instruction LIKE 'Pool %'")
    test_set = write_jsonl(folder / "test.jsonl", [
        {"instruction": "Tell the winter story.", "output": LEAKED},
        {"instruction": "Name a colour.", "output": "Blue is a colour of the clear sky at noon in summer."},
    ])  # fmt: skip
    yield wh, run_id, test_set, folder
    wh.close()


def _teacher(prompt: str) -> str:
    if "Pool codes prompt 0:" in prompt or "Pool codes prompt 1:" in prompt:
        return f"Here is the story: {LEAKED}."  # a test-set item, word for word
    return f"A plain answer to: {prompt[-40:]}"


# -- the formula, by hand ---------------------------------------------------------------------------
def test_weights_follow_the_formula_by_hand():
    # losses 1, 2, 3 (mean 2): shares 1/6, 2/6, 3/6; w = 0.25/3 + 0.75 * share
    weights = focus.domain_weights({"a": 1.0, "b": 2.0, "c": 3.0})
    assert weights == pytest.approx({"a": 0.25 / 3 + 0.125, "b": 0.25 / 3 + 0.25, "c": 0.25 / 3 + 0.375})
    assert sum(weights.values()) == pytest.approx(1)
    # an enormous loss gap still leaves every domain the floor 0.25 / K
    skewed = focus.domain_weights({"a": 1e-6, "b": 1e6})
    assert skewed["a"] == pytest.approx(0.125) and skewed["b"] == pytest.approx(0.875)
    # a domain the run did not evaluate gets the floor, then all are renormalised
    f = focus.Focus("run-x", weights, {"a": 1.0, "b": 2.0, "c": 3.0})
    used = f.weights_for(["a", "c", "new"])
    floor = 0.25 / 3
    total = weights["a"] + weights["c"] + floor
    assert used == pytest.approx({"a": weights["a"] / total, "c": weights["c"] / total, "new": floor / total})


def test_checker_failures_and_the_constraint_line():
    evaluation = {"per_domain": {
        "a": {"loss": 2.0, "checks": {"word_count": {"checked": 4, "failed": 3}, "lowercase": {"checked": 2, "failed": 0}}},
        "b": {"loss": 3.0, "checks": {"word_count": {"checked": 4, "failed": 1}, "json_format": {"checked": 5, "failed": 4}}},
    }}  # fmt: skip
    f = focus.from_metrics("run-x", {"eval": evaluation})
    assert f.checkers == {"json_format": 0.8, "word_count": 0.5, "lowercase": 0.0}
    assert f.weakest_checkers() == ["json_format", "word_count"]  # a checker never failed is not asked for
    line = focus.constraint_line(f)
    assert line.startswith("Include tasks with constraints like: a JSON answer")
    prompt = si.task_prompt(["Say hi.", "Count to three."], line)
    assert prompt.startswith(si.TASKS_HEADER + line + "1. Say hi.\n")
    # the hints are phrased the way the checkers read them
    from factory.evaluation import ifeval

    for checker, hint in focus.CHECKER_HINTS.items():
        example = hint[hint.index("(") + 1 : -1]
        assert checker in {c.checker for c in ifeval.constraints(example)}, (checker, example)


# -- refusals -------------------------------------------------------------------------------------------
def test_refusals_name_the_run_and_the_fix(trained, model):
    wh, run_id, _, folder = trained
    with pytest.raises(NotFound, match="no run with id run-nope"):
        focus.focus_from(wh, "run-nope")
    no_eval = _train(wh, model, "train", eval_split=0.0)
    with pytest.raises(focus.FocusError, match="eval_split 0"):
        focus.focus_from(wh, no_eval)
    evaluated = training.evaluate_run(
        wh, run_id, "train", training.EvalSettings(split="all", max_new_tokens=2)
    )
    with pytest.raises(focus.FocusError, match="evaluation run"):
        focus.focus_from(wh, evaluated["id"])
    factory.import_file(wh, str(write_jsonl(folder / "one.jsonl", [
        {"instruction": f"Solo task {i}", "output": "The number is seven.", "domain": "facts"} for i in range(16)
    ])))  # fmt: skip
    wh.create_snapshot("one", where="instruction LIKE 'Solo %'")
    with pytest.raises(focus.FocusError, match=r"1 domain .*at least two"):
        focus.focus_from(wh, _train(wh, model, "one", eval_split=0.5))
    with pytest.raises(focus.FocusError, match="no held-out evaluation"):
        focus.from_metrics("run-x", {"train": {}, "eval": None})
    with pytest.raises(ConfigError, match="focus_from needs limit"):
        factory.generate(wh, "distill", on="pool", focus_from=run_id)
    with pytest.raises(NotFound, match="no run with id run-nope"):  # refused before any teacher call
        factory.generate(wh, "distill", on="pool", limit=5, focus_from="run-nope")


# -- the loop, end to end ---------------------------------------------------------------------------
def test_distill_draws_by_the_runs_weights_records_them_and_decontaminates(trained):
    wh, run_id, test_set, _ = trained
    metrics = json.loads(wh.sql("SELECT metrics FROM runs WHERE id = ?", [run_id])["metrics"][0])
    losses = {d: v["loss"] for d, v in metrics["eval"]["per_domain"].items()}
    assert set(losses) == {"facts", "poetry", "codes"}
    f = focus.focus_from(wh, run_id)
    assert f.losses == pytest.approx(losses)
    assert f.domains == pytest.approx(focus.domain_weights(losses))  # the formula, on what was recorded
    weakest = max(losses, key=losses.get)
    limit = 30
    with ScriptedServer(_teacher) as server:
        summary = factory.generate(wh, "distill", on="pool", limit=limit, focus_from=run_id,
                                   test_set=str(test_set), **{"teacher.teacher": f"openai:s@{server.url}"})  # fmt: skip
    used = f.weights_for(["facts", "poetry", "codes", "travel"])
    assert used["travel"] == min(used.values())  # not in the run: the floor
    assert summary.drawn == apportion(limit, used, dict.fromkeys(used, POOL_PER_DOMAIN))
    assert sum(summary.drawn.values()) == limit == summary.accepted
    assert max(summary.drawn, key=summary.drawn.get) == weakest
    assert summary.drawn[weakest] > summary.drawn["travel"]
    made = wh.sql(f"SELECT domain, generator_params FROM rows WHERE job_id = '{summary.job_id}'")
    assert dict(made.group_by("domain").len().iter_rows()) == summary.drawn  # rows keep their prompt's domain
    assert all(json.loads(p)["focus_from"] == run_id for p in made["generator_params"])
    config = json.loads(wh.sql("SELECT config FROM jobs WHERE id = ?", [summary.job_id])["config"][0])
    assert config["focus_from"] == run_id and config["focus"]["run"] == run_id
    assert config["focus"]["domains"] == pytest.approx(f.domains)
    assert config["focus"]["used"] == pytest.approx(used)
    # the rows answering a leaked test item are dropped by decontamination, naming the item
    leaked = wh.sql(
        "SELECT r.instruction, v.filter, v.reason FROM verdicts v JOIN rows r USING (id) "
        f"WHERE r.job_id = '{summary.job_id}' AND NOT v.keep"
    )
    drawn_leaks = sum(1 for i in (0, 1) if wh.sql(
        f"SELECT 1 FROM rows WHERE job_id = '{summary.job_id}' AND instruction LIKE 'Pool codes prompt {i}:%'").height)  # fmt: skip
    assert leaked.height == drawn_leaks == summary.decontamination["dropped"]
    assert set(leaked["filter"]) <= {"decontaminate"}
    assert drawn_leaks and all(
        r.startswith("contaminated ") and r.endswith("test.jsonl:1") for r in leaked["reason"]
    )
    assert summary.decontamination["checked"] == limit and summary.warning is None


def test_a_leaked_answer_is_dropped_and_a_round_without_test_set_warns(trained):
    wh, run_id, test_set, _ = trained
    (prompts := test_set.parent / "prompts.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Pool codes prompt {i}: go", "domain": "codes"}) + "\n" for i in range(2))
        + "".join(json.dumps({"instruction": f"Other prompt {i}", "domain": "facts"}) + "\n" for i in range(3))
    )  # fmt: skip
    with ScriptedServer(_teacher) as server:
        spec = f"openai:s@{server.url}"
        cleaned = factory.generate(wh, "distill", file=str(prompts), limit=5, focus_from=run_id,
                                   test_set=str(test_set), **{"teacher.teacher": spec})  # fmt: skip
        bare = factory.generate(wh, "distill", file=str(prompts), limit=3, focus_from=run_id,
                                **{"teacher.teacher": spec})  # fmt: skip
    assert cleaned.decontamination["dropped"] == 2 and cleaned.decontamination["reasons"] == {
        "contaminated": 2
    }
    assert bare.decontamination is None and "not decontaminated" in bare.warning


def test_self_instruct_seeds_follow_the_weights(trained):
    wh, run_id, _, _ = trained
    with ScriptedServer(lambda p: "No" if p.startswith(si.IS_CLASSIFICATION_HEADER) else
                        " Describe a quiet harbour at dawn in detail.\n10. Summarise the history of tea.") as server:  # fmt: skip
        summary = factory.generate(wh, "self_instruct", on="train", rounds=1, requests_per_round=40,
                                   focus_from=run_id, **{"teacher.teacher": f"openai:s@{server.url}"})  # fmt: skip
        prompts = [p for p in server.prompts if p.startswith(si.TASKS_HEADER)]
    f = focus.focus_from(wh, run_id)
    config = json.loads(wh.sql("SELECT config FROM jobs WHERE id = ?", [summary.job_id])["config"][0])
    assert config["focus"]["run"] == run_id and config["focus"]["used"] == pytest.approx(f.domains)
    assert "not decontaminated" in summary.warning
    shots = {d: sum(p.count(f"Train {d} task") for p in prompts) for d in f.domains}
    weakest, strongest = max(f.domains, key=f.domains.get), min(f.domains, key=f.domains.get)
    assert len(prompts) == 40 and shots[weakest] > shots[strongest]
    params = wh.sql(f"SELECT generator_params FROM rows WHERE job_id = '{summary.job_id}'")[
        "generator_params"
    ]
    assert params.len() and all(json.loads(p)["focus_from"] == run_id for p in params)


def test_cli_prints_the_weights(trained):
    wh, run_id, _, _ = trained
    with ScriptedServer(_teacher) as server:
        done = subprocess.run(
            [sys.executable, "-m", "factory.cli", "generate", "distill", "--on", "pool", "--limit", "8",
             "--focus-from", run_id, "--teacher", f"openai:s@{server.url}", "--quiet",
             "--warehouse", str(wh.folder)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"focus: run {run_id}" in done.stdout and "weight" in done.stdout
    assert "travel" in done.stdout and "not in the run: floor" in done.stdout
    assert "not decontaminated" in done.stdout


def test_a_test_set_the_importer_cannot_read_is_refused_before_any_call(wh, tmp_path):
    odd = tmp_path / "passwd"
    odd.write_text("root:x:0:0\n")
    with pytest.raises(ConfigError, match="not a file the importer reads"):
        focus.test_set_values(wh, str(odd))
