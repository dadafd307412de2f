"""Self-Instruct (Wang et al. 2022), as the paper ran it, with a base model prompted in completion style.

Each round asks the teacher to continue a numbered task list: 8 in-context
instructions (6 human seeds, 2 machine-made once there are some) under "Come up
with a series of tasks:", ending at "9.". The paper's decoding (temperature 0.7,
top_p 0.5, presence penalty 2, stop at a blank line or "16."). New instructions
pass the paper's filters in its order: truncated (finish reason "length": the
last item is dropped), 3 words or fewer or more than 150, a blacklisted word,
"Write a program", a leading punctuation mark or non-ASCII character, and ROUGE-L
F1 > 0.7 against any seed or accepted instruction (the same decisions as the
original linear scan, through `factory.rouge.RougeIndex`). Accepted instructions
are sorted into classification or not by a few-shot yes/no prompt; instances are
then generated output-first for classification tasks and input-first otherwise
(up to 5 each, greedy decoding), and pass the instance filters: a task whose same
input gets different outputs is dropped, as are duplicate instances, input equal
to output and empty outputs. Every rejected candidate is stored as a row with a
verdict naming its rule.

With `focus_from` (a training run id) the round follows that run's held-out metrics
(`factory.runners.focus`): the human seeds in each prompt are drawn with probability
proportional to their domain's weight (w_d / seeds in d, so domain d fills a w_d share
of the in-context slots on average), and the task-list prompt asks, under its header,
for tasks with the constraint types the run failed most ("Include tasks with constraints
like: ..."), phrased as the instruction checkers recognise them. The job's config records
the run and the weights; each row names the run in its params. With `test_set` the
accepted rows are then checked by the `decontaminate` filter.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pydantic import Field

from factory.errors import ConfigError
from factory.evaluation.rouge import RougeIndex
from factory.plugins import GeneratorPlugin
from factory.runners import focus as focusing
from factory.runners.generation import (
    GenerationSummary,
    Output,
    make_row,
    run_generator,
    template_hash,
)
from factory.store.warehouse import Warehouse
from factory.teachers.teacher import Request, Sampling, Teacher, TeacherConfig

NAME = "self_instruct"
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to")  # fmt: skip
TASKS_HEADER = "Come up with a series of tasks:\n"
IS_CLASSIFICATION_HEADER = (
    "Can the following task be regarded as a classification task with finite output labels?\n\n"
)
INPUT_FIRST_HEADER = (
    "Come up with examples for the following tasks. Try to generate multiple examples when possible. "
    "If the task doesn't require additional input, you can generate the output directly.\n\n"
)
OUTPUT_FIRST_HEADER = (
    "Given the classification task definition and the class labels, generate an input that corresponds "
    "to each of the class labels. If the task doesn't require input, just generate the correct class "
    "label.\n\n"
)
_ITEM_SPLIT = re.compile(r"\n\s*\d+\s*\.\s*")


class SelfInstructConfig(focusing.FocusSettings):
    """Settings of a Self-Instruct run; defaults are the paper's."""

    on: str = Field(description="snapshot of human seed tasks (instruction, input, output)")
    classification_domain: str = Field(
        "classification", description="seed rows with this domain (or tag) are classification tasks"
    )
    rounds: int = Field(3, gt=0, description="rounds of instruction generation")
    requests_per_round: int = Field(4, gt=0, description="task-list prompts sent per round")
    target: int | None = Field(None, gt=0, description="stop once this many instructions are accepted")
    human_in_context: int = Field(6, ge=0)
    machine_in_context: int = Field(2, ge=0)
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(
            temperature=0.7, top_p=0.5, presence_penalty=2.0, max_tokens=1024, stop=("\n\n", "\n16", "16.")
        )
    )
    instance_sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.0, max_tokens=350, stop=("Example 6", "Task:"))
    )
    max_instances: int = Field(5, gt=0)
    similarity: float = Field(0.7, gt=0, le=1, description="reject above this ROUGE-L F1")
    min_words: int = Field(4, description="reject instructions with fewer words (the paper: more than 3)")
    max_words: int = Field(150)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)


def _seeds(wh: Warehouse, cfg: SelfInstructConfig) -> list[dict[str, Any]]:
    """Distinct seed instructions (first instance each), with their classification flag."""
    frame = wh.sql(
        "SELECT id, instruction, input, output, coalesce(domain, 'general') AS domain, "
        "coalesce(domain = $d OR list_contains(tags, $d), false) AS cls "
        f"FROM {wh.snapshot_sql(cfg.on)} WHERE kind = 'instruction' AND output <> '' "
        "QUALIFY row_number() OVER (PARTITION BY instruction ORDER BY id) = 1 ORDER BY id",
        {"d": cfg.classification_domain},
    )
    if frame.height < cfg.human_in_context:
        raise ConfigError(
            f"snapshot '{cfg.on}' has {frame.height} seed instructions; Self-Instruct needs at least "
            f"{cfg.human_in_context} (human_in_context)"
        )
    return frame.to_dicts()


def task_prompt(instructions: list[str], constraints: str = "") -> str:
    """The numbered task list to continue; `constraints` (a focused round's line) goes under the header."""
    lines = "".join(f"{k}. {text}\n" for k, text in enumerate(instructions, start=1))
    return f"{TASKS_HEADER}{constraints}{lines}{len(instructions) + 1}."


def parse_tasks(text: str, truncated: bool) -> tuple[list[str], list[str]]:
    """New instructions from a continued list; the last one is returned apart when cut off."""
    items = [re.sub(r"\s+", " ", item).strip() for item in _ITEM_SPLIT.split(text)]
    items = [item for item in items if item]
    if truncated and items:
        return items[:-1], items[-1:]
    return items, []


def rule_violation(instruction: str, cfg: SelfInstructConfig) -> str | None:
    """The first of the paper's instruction filters (before ROUGE-L) that rejects it."""
    words = len(instruction.split())
    if words < cfg.min_words:
        return f"too_short {words} words"
    if words > cfg.max_words:
        return f"too_long {words} words"
    lowered = instruction.lower()
    for word in BLACKLIST:
        if re.search(rf"\b{word}\b", lowered):
            return f"blacklisted_word {word}"
    if lowered.startswith("write a program"):
        return "write_a_program"
    first = instruction[0]
    if not first.isascii():
        return "starts_with_non_ascii"
    if not first.isalnum():
        return "starts_with_punctuation"
    return None


def classification_prompt(instruction: str, seeds: list[dict[str, Any]]) -> str:
    """Few-shot yes/no prompt; the examples are seed tasks of both kinds."""
    shots = [s for s in seeds if s["cls"]][:3] + [s for s in seeds if not s["cls"]][:4]
    shots.sort(key=lambda s: s["id"])
    body = "".join(
        f"Task: {s['instruction']}\nIs it classification? {'Yes' if s['cls'] else 'No'}\n\n" for s in shots
    )
    return f"{IS_CLASSIFICATION_HEADER}{body}Task: {instruction}\nIs it classification?"


def _instance_block(seed: dict[str, Any], output_first: bool) -> str:
    if output_first:
        text = f"Class label: {seed['output']}\n"
        return text + (f"Input: {seed['input']}\n" if seed["input"] else "")
    text = "Example 1\n"
    if seed["input"]:
        text += f"Input: {seed['input']}\n"
    return text + f"Output: {seed['output']}\n"


def instance_prompt(instruction: str, output_first: bool, seeds: list[dict[str, Any]]) -> str:
    """Output-first (classification) or input-first instance prompt with two seed demonstrations."""
    pool = [s for s in seeds if s["cls"] == output_first] or seeds
    demos = "".join(f"Task: {s['instruction']}\n{_instance_block(s, output_first)}\n" for s in pool[:2])
    header = OUTPUT_FIRST_HEADER if output_first else INPUT_FIRST_HEADER
    return f"{header}{demos}Task: {instruction}\n" + ("Class label:" if output_first else "")


def parse_instances(text: str, output_first: bool) -> list[tuple[str, str]]:
    """(input, output) pairs from a generated instance block."""
    pairs = []
    if output_first:
        for part in re.split(r"\n?\s*Class label:", "Class label:" + text):
            if not part.strip():
                continue
            label, _, rest = part.partition("\nInput:")
            pairs.append((rest.strip(), label.strip()))
        return pairs
    for part in re.split(r"\n?\s*Example \d+\s*\n?", text):
        if not part.strip():
            continue
        if "Output:" in part:
            before, _, output = part.partition("Output:")
            inp = before.partition("Input:")[2] if "Input:" in before else ""
            pairs.append((inp.strip(), output.strip()))
        else:
            pairs.append(("", part.strip()))
    return pairs


def filter_instances(
    pairs: list[tuple[str, str]], limit: int
) -> tuple[list[tuple[str, str]], list[tuple[tuple[str, str], str]]]:
    """The paper's instance filters: (kept pairs, rejected pairs with reasons); a conflict drops all."""
    outputs: dict[str, set[str]] = {}
    for inp, out in pairs:
        outputs.setdefault(inp, set()).add(out)
    if any(len(v) > 1 for v in outputs.values()):
        return [], [(p, "conflicting_outputs same input, different outputs") for p in pairs]
    kept, rejected, seen = [], [], set()
    for pair in pairs:
        inp, out = pair
        if not out:
            rejected.append((pair, "empty_output"))
        elif inp == out:
            rejected.append((pair, "input_equals_output"))
        elif pair in seen:
            rejected.append((pair, "duplicate_instance"))
        elif len(kept) >= limit:
            rejected.append((pair, "over_instance_limit"))
        else:
            seen.add(pair)
            kept.append(pair)
    return kept, rejected


def seed_weights(seeds: list[dict[str, Any]], weights: dict[str, float]) -> list[float]:
    """Each seed's draw weight: its domain's weight shared among that domain's seeds."""
    per_domain: dict[str, int] = {}
    for seed in seeds:
        per_domain[seed["domain"]] = per_domain.get(seed["domain"], 0) + 1
    return [weights[s["domain"]] / per_domain[s["domain"]] for s in seeds]


def self_instruct(
    seeds: list[dict[str, Any]],
    cfg: SelfInstructConfig,
    teacher: Teacher,
    out: Output,
    focus: focusing.Focus | None = None,
) -> None:
    index = RougeIndex(cfg.similarity)
    texts: list[str] = []
    for seed in seeds:
        index.add(seed["instruction"])
        texts.append(seed["instruction"])
    machine: list[str] = []
    constraints = focusing.constraint_line(focus) if focus else ""
    weights = seed_weights(seeds, focus.weights_for(s["domain"] for s in seeds)) if focus else []
    template = template_hash(
        NAME, TASKS_HEADER, IS_CLASSIFICATION_HEADER, INPUT_FIRST_HEADER, OUTPUT_FIRST_HEADER,
        *([constraints] if constraints else []),
    )  # fmt: skip
    focused = {"focus_from": cfg.focus_from} if cfg.focus_from else {}
    seed_id = {s["instruction"]: s["id"] for s in seeds}
    parents: dict[str, list[str]] = {}  # instruction -> the seed rows in the prompt that made it

    def row(
        instruction: str,
        rnd: int,
        output: str = "",
        input: str = "",
        tags: list[str] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        return make_row(NAME, teacher.model, instruction, output=output, input=input,
                        parents=parents.get(instruction, []), params={"round": rnd, **focused, **params},
                        template=template, origin=f"{NAME}:round{rnd}", tags=tags)  # fmt: skip

    for rnd in range(cfg.rounds):
        if cfg.target is not None and len(machine) >= cfg.target:
            break
        rng = random.Random(f"{cfg.teacher.seed}:{rnd}")
        requests, contexts = [], []
        for _ in range(cfg.requests_per_round):
            n_machine = min(cfg.machine_in_context, len(machine))
            n_human = cfg.human_in_context + cfg.machine_in_context - n_machine
            human = [s["instruction"] for s in seeds]
            shots = (
                focusing.weighted_sample(rng, human, weights, n_human)
                if focus
                else rng.sample(human, n_human)
            )
            shots += rng.sample(machine, n_machine)
            rng.shuffle(shots)
            requests.append(Request(prompt=task_prompt(shots, constraints), sampling=cfg.sampling))
            contexts.append([seed_id[t] for t in shots if t in seed_id])
        new: list[str] = []
        for (sample,), context in zip(teacher.generate(requests), contexts, strict=True):
            if sample.error:
                continue
            items, cut = parse_tasks(sample.text or "", sample.finish_reason == "length")
            for text in items + cut:
                parents.setdefault(text, context)
            for text in cut:
                out.reject(row(text, rnd), "truncated finish_reason=length")
            for text in items:
                reason = rule_violation(text, cfg)
                if reason is None:
                    match = index.too_similar(text)
                    if match is not None:
                        reason = f"rouge_l {match.score:.3f} vs '{texts[match.index][:80]}'"
                if reason is not None:
                    out.reject(row(text, rnd), reason)
                    continue
                index.add(text)
                texts.append(text)
                machine.append(text)
                new.append(text)
        if not new:
            continue
        verdicts = teacher.generate(
            [Request(prompt=classification_prompt(t, seeds), sampling=Sampling(temperature=0, max_tokens=3, stop=("\n",)))
             for t in new]
        )  # fmt: skip
        flags = [(s.text or "").strip().lower().startswith("yes") for (s,) in verdicts]
        answers = teacher.generate(
            [Request(prompt=instance_prompt(t, c, seeds), sampling=cfg.instance_sampling) for t, c in zip(new, flags, strict=True)]
        )  # fmt: skip
        for text, cls, (sample,) in zip(new, flags, answers, strict=True):
            pairs = parse_instances(sample.text or "", output_first=cls) if not sample.error else []
            kept, dropped = filter_instances(pairs, cfg.max_instances)
            tags = ["classification"] if cls else []
            for (inp, output), reason in dropped:
                out.reject(row(text, rnd, output, inp, classification=cls), reason)
            if not kept:
                out.reject(row(text, rnd, classification=cls), "no_valid_instance")
            for inp, output in kept:
                out.rows.append(row(text, rnd, output, inp, tags, classification=cls))


def run(wh: Warehouse, config: SelfInstructConfig, progress: bool = False) -> GenerationSummary:
    focus = focusing.focus_from(wh, config.focus_from) if config.focus_from else None
    if config.test_set is not None:
        focusing.test_set_values(wh, config.test_set)  # a wrong test set is refused before any call
    seeds = _seeds(wh, config)
    if focus is not None:
        config = config.model_copy(
            update={"focus": focus.record(focus.weights_for(s["domain"] for s in seeds))}
        )
    made: list[Output] = []

    def produce(t: Teacher, out: Output) -> None:
        made.append(out)
        self_instruct(seeds, config, t, out, focus)

    summary = run_generator(wh, NAME, config, config.teacher, produce, progress)
    if focus is None and config.test_set is None:
        return summary
    return focusing.finish_round(wh, summary, made[0].rows if made else [], config.focus, config.test_set)


plugin = GeneratorPlugin(
    name=NAME,
    config=SelfInstructConfig,
    run=run,
    summary="Self-Instruct: new tasks from seed tasks, the paper's prompts, decoding and filters",
)
