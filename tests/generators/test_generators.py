"""Generators end to end: distill, Self-Instruct and Evol-Instruct, on a scripted server, the tiny
model and the real vLLM server; and the resume after SIGKILL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

import factory
from generators import self_instruct as si
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer

SEEDS = [
    {"instruction": "Translate the sentence into French.", "input": "I like tea.", "output": "J'aime le thé."},
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Sleep, move, eat well."},
    {"instruction": "Classify the review as positive or negative.", "input": "Great!", "output": "positive",
     "domain": "classification"},
    {"instruction": "Write a haiku about autumn leaves.", "input": "", "output": "Red leaves fall..."},
    {"instruction": "Explain why the sky is blue.", "input": "", "output": "Rayleigh scattering."},
    {"instruction": "Is this number even or odd?", "input": "7", "output": "odd", "domain": "classification"},
    {"instruction": "Suggest a name for a bakery.", "input": "", "output": "Rise & Shine"},
    {"instruction": "Convert the temperature from Celsius to Fahrenheit.", "input": "20 C", "output": "68 F"},
]  # fmt: skip

NEW_TASKS = (
    " Summarise the following paragraph in one sentence.\n"
    "10. Draw a picture of a cat.\n"
    "11. Write a program that sorts numbers.\n"
    "12. Go now.\n"
    "13. [Bracket] Name three rivers in Europe.\n"
    "14. Summarise the following paragraph in a single sentence.\n"
    "15. Classify the tone of the sentence as formal or informal.\n"
    "16. Ünicode first letter here please."
)


def self_instruct_teacher(prompt: str) -> str:
    if prompt.startswith(si.TASKS_HEADER):
        return NEW_TASKS
    if prompt.startswith(si.IS_CLASSIFICATION_HEADER):
        return " Yes" if prompt.rsplit("Task:", 1)[1].strip().startswith("Classify") else " No"
    if prompt.startswith(si.OUTPUT_FIRST_HEADER):
        return (
            " formal\nInput: Dear Sir, I write to you.\n\nClass label: informal\nInput: hey what's up\n\n"
            "Class label: formal\nInput: Dear Sir, I write to you."
        )
    return (
        "Example 1\nInput: The cat sat on the mat all day long.\nOutput: A cat rested.\n\n"
        "Example 2\nInput: Same text.\nOutput: Same text.\n\nExample 3\nInput: Nothing here.\nOutput:"
    )


def _seed(wh, tmp_path, records=SEEDS, name="seeds"):
    factory.import_file(wh, str(write_jsonl(tmp_path / f"{name}.jsonl", records)))
    wh.create_snapshot(name)


def _run(wh, name: str, values: dict):
    return factory.generate(wh, name, **values)


def test_self_instruct_rules_in_the_papers_order(wh, tmp_path):
    _seed(wh, tmp_path)
    with ScriptedServer(self_instruct_teacher) as server:
        summary = _run(
            wh,
            "self-instruct",
            {
                "on": "seeds",
                "rounds": 1,
                "requests_per_round": 2,
                "teacher.teacher": f"openai:s@{server.url}",
            },
        )
        prompts = list(server.prompts)
    task_prompts = [p for p in prompts if p.startswith(si.TASKS_HEADER)]
    assert len(task_prompts) == 2
    listed = re.findall(r"^\d+\. (.*)$", task_prompts[0], flags=re.M)
    assert len(listed) == 8 and set(listed) <= {s["instruction"] for s in SEEDS}  # 8 human: no machine yet
    assert task_prompts[0].endswith("\n9.")

    reasons = dict(
        wh.sql("SELECT r.instruction, v.reason FROM verdicts v JOIN rows r USING (id)").iter_rows()
    )
    assert reasons["Draw a picture of a cat."] == "blacklisted_word picture"
    assert reasons["Write a program that sorts numbers."] == "write_a_program"
    assert reasons["Go now."] == "too_short 2 words"
    assert reasons["[Bracket] Name three rivers in Europe."] == "starts_with_punctuation"
    assert reasons["Ünicode first letter here please."] == "starts_with_non_ascii"
    assert reasons["Summarise the following paragraph in a single sentence."].startswith(
        "rouge_l 0.800 vs 'Summarise the following paragraph in one sentence."
    )
    rows = wh.sql(
        "SELECT instruction, input, output, tags, parent_ids FROM rows WHERE generator = 'self_instruct' "
        "AND id NOT IN (SELECT id FROM verdicts) ORDER BY output"
    )
    assert rows.select("instruction", "input", "output").rows() == [
        ("Summarise the following paragraph in one sentence.", "The cat sat on the mat all day long.",
         "A cat rested."),
        ("Classify the tone of the sentence as formal or informal.", "Dear Sir, I write to you.", "formal"),
        ("Classify the tone of the sentence as formal or informal.", "hey what's up", "informal"),
    ]  # fmt: skip
    assert rows["tags"].to_list() == [[], ["classification"], ["classification"]]
    seed_ids = set(wh.sql("SELECT id FROM rows WHERE generator = 'human'")["id"])
    assert all(set(p) <= seed_ids and len(p) == 8 for p in rows["parent_ids"])
    all_reasons = set(wh.sql("SELECT reason FROM verdicts")["reason"])
    assert {"input_equals_output", "empty_output"} <= all_reasons
    assert "duplicate_instance" not in all_reasons  # the duplicate is the kept row itself: no verdict on it
    # the second request's copies are all near-copies of the first's
    assert summary.rejected["rouge_l"] >= 3
    assert summary.accepted == 3
    after = wh.create_snapshot("after")
    assert after["row_count"] == len(SEEDS) + 3


def test_self_instruct_machine_instructions_join_the_prompt_in_later_rounds(wh, tmp_path):
    _seed(wh, tmp_path)
    with ScriptedServer(self_instruct_teacher) as server:
        _run(wh, "self_instruct", {"on": "seeds", "rounds": 2, "requests_per_round": 1,
                                   "teacher.teacher": f"openai:s@{server.url}"})  # fmt: skip
        second = [p for p in server.prompts if p.startswith(si.TASKS_HEADER)][1]
    listed = re.findall(r"^\d+\. (.*)$", second, flags=re.M)
    machine = [t for t in listed if t not in {s["instruction"] for s in SEEDS}]
    assert len(listed) == 8 and len(machine) == 2


def test_instance_filters():
    kept, dropped = si.filter_instances([("a", "1"), ("a", "2"), ("b", "3")], 5)
    assert kept == [] and {r for _, r in dropped} == {"conflicting_outputs same input, different outputs"}
    kept, dropped = si.filter_instances([("a", "1"), ("a", "1"), ("b", "b"), ("c", ""), ("d", "4")], 5)
    assert kept == [("a", "1"), ("d", "4")]
    assert [r for _, r in dropped] == ["duplicate_instance", "input_equals_output", "empty_output"]


def evol_teacher(prompt: str) -> str:
    if "#Given Prompt#" in prompt:
        given = prompt.split("#Given Prompt#:\n")[1].split("\n\n#")[0]
        return {
            "Explain photosynthesis.": "Explain photosynthesis, naming both stages and what each one needs.",
            "Name a colour.": "#Rewritten Prompt#: Name a colour you like.",
            "Tell me a joke.": "Tell me a joke about cats.",
            "Count to three.": "Count to three slowly.",
            "Say something.": "Say something about the sea.",
        }.get(given, given + " Give two examples and explain each of them in one sentence.")
    if "First instruction:" in prompt:
        return " Equal" if "Count to three" in prompt else " Not Equal"
    if "joke about cats" in prompt:
        return "Sorry, I cannot do that."
    if "about the sea" in prompt:
        return "the and of ."
    return "Light and water make sugar in two stages; the light reactions and the Calvin cycle."


def test_evol_instruct_elimination_and_the_pool(wh, tmp_path):
    pool = [{"instruction": t, "input": "", "output": "x"} for t in
            ("Explain photosynthesis.", "Name a colour.", "Tell me a joke.", "Count to three.", "Say something.")]  # fmt: skip
    _seed(wh, tmp_path, pool, name="pool")
    with ScriptedServer(evol_teacher) as server:
        summary = _run(wh, "evol-instruct", {"on": "pool", "rounds": 2, "operations": ["add_constraints"],
                                             "teacher.teacher": f"openai:s@{server.url}"})  # fmt: skip
    reasons = dict(
        wh.sql("SELECT r.instruction, v.reason FROM verdicts v JOIN rows r USING (id)").iter_rows()
    )
    assert (
        reasons["#Rewritten Prompt#: Name a colour you like."] == "copied_template_words '#rewritten prompt#'"
    )
    assert reasons["Tell me a joke about cats."] == "answer_is_refusal"
    assert reasons["Count to three slowly."] == "no_information_gain"
    assert reasons["Say something about the sea."] == "answer_only_stop_words"
    accepted = wh.sql(
        "SELECT instruction, parent_ids, generator_params FROM rows WHERE generator = 'evol_instruct' "
        "AND id NOT IN (SELECT id FROM verdicts) ORDER BY created_at, instruction"
    )
    first = "Explain photosynthesis, naming both stages and what each one needs."
    second = first + " Give two examples and explain each of them in one sentence."
    assert accepted["instruction"].to_list() == [first, second]  # round 2 evolved round 1's row
    [seed_id] = wh.sql("SELECT id FROM rows WHERE instruction = 'Explain photosynthesis.'")["id"]
    [first_id] = wh.sql(f"SELECT id FROM rows WHERE instruction = '{first}'")["id"]
    assert accepted["parent_ids"].to_list() == [[seed_id], [first_id]]
    assert summary.accepted == 2 and sum(summary.rejected.values()) == 8  # 4 failures in each round
    # failed evolutions went back to the pool: round 2 evolved the originals again
    assert (
        wh.sql("SELECT count(*) AS n FROM rows WHERE instruction = 'Tell me a joke about cats.'")["n"][0] == 1
    )


def test_distill_sources_n_system_templates_and_lineage(wh, tmp_path):
    _seed(wh, tmp_path)
    (tmp_path / "p.txt").write_text("First prompt\n\nSecond prompt\n")
    with ScriptedServer(lambda p: f"answer: {p[-30:]}") as server:
        spec = f"openai:s@{server.url}"
        snap = _run(wh, "distill", {"on": "seeds", "n": 2, "system": "role", "role": "a chemist",
                                    "teacher.teacher": spec})  # fmt: skip
        query = _run(wh, "distill", {"query": "SELECT instruction FROM rows WHERE input = '' LIMIT 3",
                                     "system": "cot", "teacher.teacher": spec})  # fmt: skip
        text = _run(wh, "distill", {"file": str(tmp_path / "p.txt"), "teacher.teacher": spec})
    assert snap.accepted == 16 and snap.inserted == 8  # the scripted teacher answers n=2 identically
    assert query.accepted == 3 and text.accepted == 2
    row = wh.sql(
        "SELECT * FROM rows WHERE generator = 'distill' AND instruction = 'Explain why the sky is blue.'"
    ).row(0, named=True)
    [parent] = wh.sql(
        "SELECT id FROM rows WHERE generator = 'human' AND instruction = 'Explain why the sky is blue.'"
    )["id"]
    assert row["parent_ids"] == [parent] and row["teacher_model"] == "s" and row["template_hash"]
    assert row["output"] == "answer: Explain why the sky is blue."
    configs = " ".join(wh.sql("SELECT config FROM jobs")["config"])
    assert "openai:s" in configs and server.url not in configs  # the base URL is never stored
    first_messages = server.prompts[0]
    assert '"role": "system", "content": "You are a chemist.' in first_messages


def test_distill_rejects_cut_off_answers(wh, tiny_model, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"instruction": "Write a story"}\n{"prompt": "List the rivers"}\n')
    summary = _run(wh, "distill", {"file": str(tmp_path / "p.jsonl"), "teacher.teacher": f"hf:{tiny_model}",
                                   "sampling": {"max_tokens": 4, "temperature": 1.0}, "n": 2})  # fmt: skip
    assert (
        summary.rejected.get("truncated", 0) + summary.accepted + summary.rejected.get("empty_output", 0) == 4
    )
    truncated = wh.sql("SELECT count(*) AS n FROM verdicts WHERE reason LIKE 'truncated%'")["n"][0]
    assert truncated == summary.rejected.get("truncated", 0) > 0


def test_bad_prompt_file_names_the_line(wh, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"instruction": "ok"}\n{"nothing": 1}\n')
    with pytest.raises(Exception, match=r"p.jsonl:2: field 'instruction'"):
        _run(wh, "distill", {"file": str(tmp_path / "p.jsonl")})


def test_generators_run_on_the_tiny_model(wh, tmp_path, tiny_model):
    """The whole path on a real (random) model: every call recorded, every rejection explained."""
    _seed(wh, tmp_path)
    spec = f"hf:{tiny_model}"
    small = {"max_tokens": 24}
    si_summary = _run(wh, "self_instruct", {"on": "seeds", "rounds": 1, "requests_per_round": 2,
                                            "sampling": small, "teacher.teacher": spec})  # fmt: skip
    evol = _run(wh, "evol_instruct", {"on": "seeds", "rounds": 1, "limit": 3, "rewrite_sampling": small,
                                      "answer_sampling": small, "teacher.teacher": spec})  # fmt: skip
    for summary in (si_summary, evol):
        assert summary.teacher_stats["calls"] > 0
        status = wh.sql(f"SELECT status FROM jobs WHERE id = '{summary.job_id}'")["status"][0]
        assert status == "succeeded"
    unexplained = wh.sql(
        "SELECT count(*) AS n FROM rows WHERE generator IN ('self_instruct', 'evol_instruct') "
        "AND id NOT IN (SELECT id FROM verdicts) AND output = ''"
    )["n"][0]
    assert unexplained == 0


@pytest.mark.server
def test_generators_against_the_real_vllm_server(tmp_path, vllm_server):
    """As a user would: the CLI, the real server, then a snapshot of what survived."""
    warehouse = tmp_path / "wh"
    wh = factory.init(warehouse)
    _seed(wh, tmp_path)
    wh.close()
    spec = f"openai:tiny@{vllm_server.url}"
    documents = tmp_path / "notes.md"
    documents.write_text("The sky is blue because air scatters short wavelengths.\n\nTea comes from leaves.")
    base = [sys.executable, "-m", "factory.cli", "generate", "--warehouse", str(warehouse), "--teacher", spec,
            "--quiet"]  # fmt: skip
    for args in (
        ["self-instruct", "--on", "seeds", "--rounds", "1", "--set", "sampling.max_tokens=48"],
        [
            "evol-instruct",
            "--on",
            "seeds",
            "--limit",
            "3",
            "--rounds",
            "1",
            "--set",
            "answer_sampling.max_tokens=32",
        ],
        ["distill", "--on", "seeds", "--n", "2", "--set", "sampling.max_tokens=32", "--set", "style=chat"],
        [
            "preference",
            "--on",
            "seeds",
            "--limit",
            "3",
            "--n",
            "2",
            "--set",
            "sampling.max_tokens=24",
            "--set",
            "judge_sampling.max_tokens=24",
        ],
        [
            "mcts",
            "--on",
            "seeds",
            "--limit",
            "2",
            "--set",
            "rollouts=2",
            "--set",
            "task_actions=1",
            "--set",
            "sampling.max_tokens=24",
            "--set",
            "judge_sampling.max_tokens=12",
            "--set",
            "answer_sampling.max_tokens=24",
        ],
        [
            "reflect",
            "--on",
            "seeds",
            "--limit",
            "2",
            "--set",
            f"documents={documents}",
            "--set",
            "iterations=2",
            "--set",
            f"student={spec}",
            "--set",
            "sampling.max_tokens=24",
            "--set",
            "judge_sampling.max_tokens=24",
        ],
    ):
        done = subprocess.run([*base[:4], args[0], *base[4:], *args[1:]], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "done" in done.stdout and "requests" in done.stdout
    wh = factory.open(warehouse)
    jobs = wh.sql("SELECT plugin, status FROM jobs WHERE kind = 'generate' ORDER BY started_at").rows()
    generators = ["self_instruct", "evol_instruct", "distill", "preference", "mcts", "reflect"]
    assert jobs == [(g, "succeeded") for g in generators]
    made = wh.sql("SELECT DISTINCT generator FROM rows WHERE generator IS NOT NULL")["generator"].to_list()
    assert {"mcts", "reflect"} <= set(made)
    assert (
        wh.sql("SELECT count(*) AS n FROM llm_calls WHERE backend = 'openai' AND error IS NULL")["n"][0] > 0
    )
    wh.close()


RESUMABLE = {
    "distill": ["--file", "{prompts}", "--set", "sampling.max_tokens=24"],
    "self-instruct": ["--on", "seeds", "--rounds", "4", "--set", "requests_per_round=3",
                      "--set", "sampling.max_tokens=48", "--set", "instance_sampling.max_tokens=48"],
    "evol-instruct": ["--on", "seeds", "--rounds", "2", "--set", "rewrite_sampling.max_tokens=48",
                      "--set", "answer_sampling.max_tokens=48"],
    "preference": ["--file", "{prompts}", "--limit", "10", "--set", "n=2", "--set", "sampling.max_tokens=24",
                   "--set", "judge_sampling.max_tokens=24"],
    "mcts": ["--on", "seeds", "--set", "rollouts=2", "--set", "task_actions=1", "--set", "sampling.max_tokens=24",
             "--set", "judge_sampling.max_tokens=12", "--set", "answer_sampling.max_tokens=24"],
    "reflect": ["--file", "{prompts}", "--limit", "5", "--set", "documents={documents}", "--set", "iterations=2",
                "--set", "student=hf:{model}", "--set", "sampling.max_tokens=16",
                "--set", "judge_sampling.max_tokens=16"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("generator", list(RESUMABLE))
def test_sigkill_resume_repeats_no_call_and_ends_with_the_same_rows(generator, tmp_path, tiny_model):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Explain idea number {i} in a sentence\n" for i in range(30)))
    documents = tmp_path / "notes.txt"
    documents.write_text("".join(f"Idea number {i} is about the number {i}.\n\n" for i in range(60)))
    args = [a.format(prompts=prompts, documents=documents, model=tiny_model) for a in RESUMABLE[generator]]

    def command(warehouse):
        return [sys.executable, "-m", "factory.cli", "generate", generator, "--warehouse", str(warehouse),
                "--teacher", f"hf:{tiny_model}", "--quiet", "--set", "teacher.options.batch_size=1", *args]  # fmt: skip

    for name in ("killed", "straight"):
        wh = factory.init(tmp_path / name)
        _seed(wh, tmp_path)
        wh.close()
    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    clean = factory.open(tmp_path / "straight")
    total = clean.sql("SELECT count(*) AS n FROM llm_calls")["n"][0]

    proc = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journals = tmp_path / "killed" / ".calls"
    flushes, last, deadline = 0, 0, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill it mid-batch, part-way through
        lines = sum(f.read_text().count("\n") for f in journals.glob("*.jsonl")) if journals.exists() else 0
        flushes += lines < last  # the journal empties when a batch is committed
        last = lines
        if lines >= total // 3 or (flushes >= 2 and lines >= 2):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with factory.open(tmp_path / "killed") as wh:
        stored = wh.sql("SELECT count(*) AS n FROM llm_calls")["n"][0]
    answered = stored + sum(f.read_text().count("\n") for f in journals.glob("*.jsonl"))
    assert 0 < answered < total  # killed part-way

    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    hits = int(re.search(r"([\d,]+) from the cache", resumed.stdout).group(1).replace(",", ""))
    assert hits >= answered

    killed = factory.open(tmp_path / "killed")
    once = killed.sql(
        "SELECT count(*) AS n, count(DISTINCT key) AS k FROM llm_calls WHERE error IS NULL"
    ).row(0)
    assert once == (total, total)  # no answered call was asked twice
    query = "SELECT id FROM rows ORDER BY id"
    assert killed.sql(query)["id"].to_list() == clean.sql(query)["id"].to_list()
    verdicts = "SELECT id, reason FROM verdicts ORDER BY ALL"
    assert killed.sql(verdicts).rows() == clean.sql(verdicts).rows()
    statuses = killed.sql("SELECT status FROM jobs WHERE kind = 'generate' ORDER BY started_at")["status"]
    assert statuses.to_list() == ["interrupted", "succeeded"]


@pytest.mark.slow
def test_mosaic_killed_while_composing_commits_nothing_and_reruns_to_the_same_rows(tmp_path, tiny_model):
    """Mosaic has no teacher calls to cache: a kill loses the composition, and the seeded rerun redoes it."""
    from bench.synth import write_alpaca_jsonl

    data = write_alpaca_jsonl(tmp_path / "src.jsonl", 20_000, seed=3)
    for name in ("killed", "straight"):
        with factory.init(tmp_path / name) as wh:
            factory.import_file(wh, str(data))
            wh.create_snapshot("src")

    def command(warehouse):
        return [sys.executable, "-m", "factory.cli", "generate", "mosaic", "--warehouse", str(warehouse), "--on",
                "src", "--quiet", "--set", f"tokenizer={tiny_model}", "--set", "passes=6"]  # fmt: skip

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, running = time.monotonic() + 120, False
    while time.monotonic() < deadline and proc.poll() is None and not running:
        with factory.open(tmp_path / "killed", read_only=True) as wh:
            running = wh.sql("SELECT count(*) AS n FROM jobs WHERE status = 'running'")["n"][0] == 1
        time.sleep(0.05)
    assert running and proc.poll() is None, "mosaic finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with factory.open(tmp_path / "killed", read_only=True) as wh:
        assert wh.sql("SELECT count(*) AS n FROM rows WHERE generator = 'mosaic'")["n"][0] == 0
    rerun = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    query = "SELECT id, parent_ids FROM rows WHERE generator = 'mosaic' ORDER BY id"
    with factory.open(tmp_path / "killed") as killed, factory.open(tmp_path / "straight") as clean:
        assert killed.sql(query).rows() == clean.sql(query).rows() and killed.sql(query).height > 0
        statuses = killed.sql("SELECT status FROM jobs WHERE kind = 'generate' ORDER BY started_at")["status"]
        assert statuses.to_list() == ["interrupted", "succeeded"]
