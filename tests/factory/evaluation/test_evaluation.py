"""Evaluation metrics: the verifiable-instruction checkers, ROUGE-L and BLEU on non-Latin text,
MiniLM similarity, per-domain means (eq. 13), and the MT-Bench judge on a local HTTP server."""

from __future__ import annotations

import pytest

import factory
from factory.evaluation import ifeval
from factory.evaluation import metrics as evaluation
from factory.models.embeddings import encode
from factory.runners import training
from factory.teachers.teacher import TeacherError
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer

# (instruction, a response that obeys it, one that does not)
CASES = [
    ("Answer in at least 5 words.", "This has five words here.", "Too short."),
    ("Reply in at most two sentences.", "One. Two.", "One. Two. Three."),
    ("Write exactly 2 paragraphs.", "First part.\n\nSecond part.", "Only one paragraph."),
    ("Use exactly 3 bullet points.", "* a\n* b\n* c", "* a\n* b"),
    ("Include the keywords 'river' and 'stone'.", "A stone in the river.", "A river only."),
    ("Do not use the words 'very' or 'really'.", "It is good.", "It is very good."),
    ("Make sure the word 'rain' appears at least 2 times.", "Rain, rain, go away.", "Rain once."),
    ("Make sure the letter 'z' appears at least 3 times.", "Zebras zigzag fuzz.", "No such letter."),
    ("Wrap your output in JSON format.", '```json\n{"a": 1}\n```', "a: 1"),
    ("Your entire response should be in English, in all lowercase letters.", "all quiet here.", "All quiet."),
    ("Your answer must be in all capital letters.", "LOUD AND CLEAR.", "Loud."),
    ("Start your response with 'Dear reader'.", "Dear reader, hello.", "Hello, dear reader."),
    ("End your response with 'Is there anything else?'", "Done. Is there anything else?", "Is there anything else? Done."),
    ("Answer without commas.", "No commas here.", "Yes, commas."),
    ("Wrap your entire response with double quotation marks.", '"Quoted."', "Not quoted."),
    ("Give it a title wrapped in double angular brackets, such as <<poem of joy>>.", "<<Rain>>\nDrops.", "Rain\nDrops."),
    ("The response must contain at least 2 placeholders such as [address].", "Go to [address] at [time].", "Go home."),
    ("Highlight at least 2 sections with markdown, i.e. *highlighted section*.", "*one* and *two*", "*one* only"),
    ("At the end of your response, add a postscript starting with P.S.", "Hi.\nP.S. bye", "Hi. bye"),
    ("Your response must have 2 sections. Mark the beginning of each section with 'SECTION X'.",
     "SECTION 1\na\nSECTION 2\nb", "SECTION 1\na"),
    ("Words with all capital letters should appear at least 2 times.", "WOW and YES.", "Wow and yes."),
]  # fmt: skip


@pytest.mark.parametrize(("instruction", "good", "bad"), CASES, ids=[c[0][:30] for c in CASES])
def test_each_checker_tells_obeying_from_disobeying(instruction, good, bad):
    found = ifeval.constraints(instruction)
    assert len(found) == 1, found
    assert ifeval.check(good, found[0]) and not ifeval.check(bad, found[0])


def test_there_are_at_least_fifteen_checkers_and_each_case_uses_a_different_one():
    used = {ifeval.constraints(c[0])[0].checker for c in CASES}
    assert len(used) == len(CASES) >= 15 and used == set(ifeval.CHECKERS)


def test_a_row_scores_the_share_of_constraints_followed():
    result = ifeval.score("Answer in all lowercase letters and end with 'bye'.", "hello, bye")
    assert result == {"followed": 1.0, "checks": {"lowercase": True, "ends_with": True}}
    assert (
        ifeval.score("Answer in all lowercase letters and end with 'bye'.", "Hello, bye")["followed"] == 0.5
    )
    assert ifeval.score("Tell me about rivers.", "Rivers flow.") is None


def test_rouge_and_bleu_count_non_latin_text():
    assert evaluation.tokens("我爱北京 Привет, мир") == ["我", "爱", "北", "京", "привет", "мир"]
    assert evaluation.rouge_l("我爱北京天安门", "我爱北京") == pytest.approx(2 * 4 / 7 * 1 / (4 / 7 + 1))
    assert evaluation.rouge_l("Привет, мир", "привет мир") == 1.0
    assert evaluation.bleu(["Кошка сидит на ковре у окна"], ["Кошка сидит на ковре у окна"]) == pytest.approx(
        100
    )
    partial = evaluation.bleu(["我爱北京天安门广场"], ["我爱北京天安门"])
    assert 0 < partial < 100  # the zh tokenizer splits the characters


def test_evaluation_per_domain_and_the_mean_over_domains(wh, tmp_path, tiny_model):
    rows = [{"instruction": f"Say {i} in all lowercase letters", "output": f"number {i}",
             "domain": ["math", "chat", "code"][i % 3]} for i in range(9)]  # fmt: skip
    factory.import_file(wh, str(write_jsonl(tmp_path / "r.jsonl", rows)))
    wh.create_snapshot("evalset")
    with ScriptedServer(lambda p: "Fine answer. Rating: [[7]]" if "[Question]" in p else "?") as judge:
        settings = evaluation.EvalSettings(split="all", max_new_tokens=6, judge=f"openai:judge@{judge.url}")
        run = training.evaluate_run(wh, str(tiny_model), "evalset", settings)
    metrics = run["metrics"]["eval"]
    assert metrics["rows"] == 9 and set(metrics["per_domain"]) == {"math", "chat", "code"}
    assert metrics["judge"] == 7.0 and metrics["constrained_rows"] == 9
    for key in ("loss", "rouge_l", "similarity", "instructions_followed"):
        per = [d[key] for d in metrics["per_domain"].values()]
        assert metrics["domain_mean"][key] == pytest.approx(sum(per) / 3)
    assert metrics["perplexity"] > 1 and -1 <= metrics["similarity"] <= 1
    shown = metrics["examples"]  # all 9 rows: recompute the per-row metrics from the responses
    assert len(shown) == 9
    cosines = (encode([e["response"] for e in shown]) * encode([e["reference"] for e in shown])).sum(1)
    assert metrics["similarity"] == pytest.approx(float(cosines.mean()), abs=1e-5)
    rouge = [evaluation.rouge_l(e["reference"], e["response"]) for e in shown]
    assert metrics["rouge_l"] == pytest.approx(sum(rouge) / 9)
    followed = [ifeval.score(e["instruction"], e["response"])["followed"] for e in shown]
    assert metrics["instructions_followed"] == pytest.approx(sum(followed) / 9)
    failed = sum(not f for f in followed)  # one constraint a row: lowercase
    assert metrics["checks"] == {"lowercase": {"checked": 9, "failed": failed}}
    assert sum(d["checks"]["lowercase"]["checked"] for d in metrics["per_domain"].values()) == 9
    assert metrics["bleu"] == pytest.approx(
        evaluation.bleu([e["reference"] for e in shown], [e["response"] for e in shown])
    )
    stored = wh.sql(f"SELECT trainer, status, artifact_path FROM runs WHERE id = '{run['id']}'").row(0)
    assert stored == ("eval", "succeeded", str(tiny_model))
    with pytest.raises(ValueError, match="no rows to evaluate"):
        evaluation.evaluate(
            wh, str(tiny_model), "evalset", evaluation.EvalSettings(split="eval", eval_split=0.0)
        )


def test_a_failing_judge_is_closed_its_calls_recorded_and_the_run_failed(wh, tmp_path, tiny_model):
    rows = [{"instruction": f"Say {i}", "output": f"number {i}"} for i in range(3)]
    factory.import_file(wh, str(write_jsonl(tmp_path / "r.jsonl", rows)))
    wh.create_snapshot("evalset")
    with ScriptedServer(lambda p: 401) as judge:  # a bad key: every request would fail, the job stops
        settings = evaluation.EvalSettings(split="all", max_new_tokens=4, judge=f"openai:judge@{judge.url}")
        with pytest.raises(TeacherError, match="http_401"):
            training.evaluate_run(wh, str(tiny_model), "evalset", settings)
    run = wh.sql("SELECT id, status, metrics FROM runs").row(0, named=True)
    assert run["status"] == "failed" and "http_401" in run["metrics"]
    # The judge's teacher was closed: its journal moved into llm_calls, no file left behind.
    assert (
        wh.sql(
            "SELECT count(*) FROM llm_calls WHERE job_id = ? AND error LIKE 'http_401%'", [run["id"]]
        ).item()
        >= 1
    )
    assert not list((wh.folder / ".calls").glob("*.jsonl"))


def test_generation_stops_at_the_templates_end_of_turn_marker(tiny_model):
    """Greedy answers end where the template closes the assistant turn, not only at EOS: the tiny
    template's `<|end|>` is one token (a stop id); ChatML's `<|im_end|>` is several tokens in the tiny
    vocabulary (a stop string). Without it a response runs on past its answer and every metric reads
    the run-on text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.models import chat

    net = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    stops = evaluation._stops(net, tokenizer, chat.turn_end(tokenizer))
    assert tokenizer.convert_tokens_to_ids("<|end|>") in stops["eos_token_id"]
    assert tokenizer.eos_token_id in stops["eos_token_id"] and "stop_strings" not in stops
    chat.use_template(tokenizer, "chatml")
    stops = evaluation._stops(net, tokenizer, chat.turn_end(tokenizer))
    assert stops["stop_strings"] == ["<|im_end|>"] and stops["tokenizer"] is tokenizer
