"""The outcome bench's data: four learnable task families, a held-out eval set, and a pool with junk.

Every good row is a task a program can answer (so a small model trained from scratch
can learn it, and an oracle teacher can answer new prompts): arithmetic, word
operations, counting, and formatting with verifiable constraints (IFEval-style: bullet
counts, lowercase, a required ending), each with several instruction templates, in
unequal shares (the smallest domain is formatting). The pool mixes good rows with what
real pools contain, in shares fixed here before any training run and not changed after:

  near_duplicate   8%  a good row again with a small edit (a "Please", a "Thanks!", a case change)
  truncated        6%  the answer cut off part-way
  empty            4%  no answer
  refusal          5%  a canned refusal instead of the answer
  off_topic        5%  the answer of another row's task
  wrong_language   5%  the task in German, French or Spanish
  contaminated     3%  an item of the held-out eval set, copied in

so 64% of the pool is good rows. The eval set is generated from a different seed and
no good row shares a task with it (same family and arguments); only the
`contaminated` junk does, on purpose.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

JUNK_SHARES = {"near_duplicate": 0.08, "truncated": 0.06, "empty": 0.04, "refusal": 0.05, "off_topic": 0.05,
               "wrong_language": 0.05, "contaminated": 0.03}  # fmt: skip
DOMAIN_SHARES = {"arithmetic": 0.35, "word_ops": 0.25, "counting": 0.25, "formatting": 0.15}

WORDS = ("apple river stone cloud garden window candle forest silver ocean bridge meadow lantern harbor "
         "pepper violin marble thunder orchard pencil basket mirror ladder cotton rocket blanket tunnel "
         "feather kettle saddle island button carpet wagon helmet jacket castle puzzle copper valley").split()  # fmt: skip
CATEGORIES = {
    "colors": "red blue green yellow purple orange black white brown pink".split(),
    "fruits": "apple banana cherry grape lemon mango peach pear plum melon".split(),
    "animals": "cat dog horse tiger zebra otter eagle whale rabbit fox".split(),
    "tools": "hammer wrench saw drill chisel pliers ruler shovel rake axe".split(),
}
NUMBER_WORDS = "zero one two three four five six seven eight nine".split()


@dataclass(frozen=True)
class Task:
    domain: str
    family: str
    args: tuple
    instruction: str
    answer: str

    @property
    def key(self) -> tuple:
        return (self.family, self.args)


def _arithmetic(rng: random.Random) -> tuple[str, tuple, list[str], str]:
    a, b = rng.randint(1, 40), rng.randint(1, 40)
    templates = [f"What is {a} plus {b}?", f"Add {a} and {b}.", f"Compute the sum of {a} and {b}."]
    return "sum", (a, b), templates, f"{a} plus {b} is {a + b}."


def _word_ops(rng: random.Random) -> tuple[str, tuple, list[str], str]:
    words = tuple(rng.sample(WORDS, rng.randint(3, 6)))
    text = " ".join(words)
    if rng.random() < 0.5:
        templates = [f"Reverse the order of these words: {text}", f"Write these words backwards: {text}"]
        return "reverse", words, templates, " ".join(reversed(words))
    templates = [f"Sort these words alphabetically: {text}", f"Put these words in alphabetical order: {text}"]
    return "sort", words, templates, " ".join(sorted(words))


def _counting(rng: random.Random) -> tuple[str, tuple, list[str], str]:
    if rng.random() < 0.5:
        words = tuple(rng.choices(WORDS, k=rng.choice([2, 3, 4, 5, 6, 8, 11, 15])))  # long-tailed
        text = " ".join(words)
        templates = [f"How many words are in this sentence: {text}", f"Count the words in: {text}"]
        return "count_words", words, templates, f"There are {len(words)} words."
    word = rng.choice(WORDS)
    templates = [f"How many letters are in the word {word}?", f"Count the letters in the word {word}."]
    return "count_letters", (word,), templates, f"The word {word} has {len(word)} letters."


def _formatting(rng: random.Random) -> tuple[str, tuple, list[str], str]:
    kind = rng.choice(["bullets", "lowercase", "ending"])
    if kind == "bullets":
        category, k = rng.choice(sorted(CATEGORIES)), rng.randint(2, 6)
        templates = [f"List {k} {category} as exactly {k} bullet points.",
                     f"Name {k} {category} in exactly {k} bullet points."]  # fmt: skip
        return (
            "bullets",
            (category, k),
            templates,
            "\n".join(f"* {item}" for item in CATEGORIES[category][:k]),
        )
    word = rng.choice(WORDS)
    if kind == "lowercase":
        templates = [f"Describe the word {word.upper()} in all lowercase letters.",
                     f"Say something about the word {word.upper()} in lowercase letters only."]  # fmt: skip
        return "lowercase", (word,), templates, f"the word {word} has {len(word)} letters."
    times = rng.randint(2, 4)
    templates = [f"Write the word {word} {NUMBER_WORDS[times]} times and end your answer with 'Done.'",
                 f"Repeat the word {word} {NUMBER_WORDS[times]} times, then finish with 'Done.'"]  # fmt: skip
    return "ending", (word, times), templates, " ".join([word] * times) + ". Done."


FAMILIES: dict[str, Callable[[random.Random], tuple[str, tuple, list[str], str]]] = {
    "arithmetic": _arithmetic, "word_ops": _word_ops, "counting": _counting, "formatting": _formatting,
}  # fmt: skip


def task(domain: str, rng: random.Random) -> Task:
    family, args, templates, answer = FAMILIES[domain](rng)
    return Task(domain, family, args, rng.choice(templates), answer)


def _domains(n: int, rng: random.Random) -> list[str]:
    out = [d for d, share in DOMAIN_SHARES.items() for _ in range(round(n * share))][:n]
    out += ["arithmetic"] * (n - len(out))
    rng.shuffle(out)
    return out


def eval_set(n: int = 160, seed: int = 1000) -> list[Task]:
    """Held-out tasks, the same number per domain, no two alike."""
    rng, seen, out = random.Random(seed), set(), []
    for domain in DOMAIN_SHARES:
        while sum(t.domain == domain for t in out) < n // len(DOMAIN_SHARES):
            t = task(domain, rng)
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
    return out


def good_tasks(n: int, seed: int, avoid: set[tuple]) -> list[Task]:
    """`n` tasks in the domain shares, none sharing family and arguments with `avoid` (the eval set)."""
    rng, out = random.Random(seed), []
    for domain in _domains(n, rng):
        while True:
            t = task(domain, rng)
            if t.key not in avoid:
                out.append(t)
                break
    return out


FOREIGN = [
    (r"What is (\d+) plus (\d+)\?", ["Wie viel ist {0} plus {1}?", "Combien font {0} plus {1} ?", "¿Cuánto es {0} más {1}?"],
     ["{0} plus {1} ist {2}.", "{0} plus {1} font {2}.", "{0} más {1} son {2}."]),
]  # fmt: skip
FOREIGN_GENERIC = [
    ("Bitte beantworte die folgende Aufgabe sorgfältig: {0}", "Die Antwort lautet: {0}"),
    ("Réponds à la question suivante, s'il te plaît : {0}", "Voici la réponse : {0}"),
    ("Por favor, responde a la siguiente tarea: {0}", "La respuesta es: {0}"),
]
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot complete this task.",
    "I am sorry, but I cannot provide that information.",
]


def _foreign(t: Task, rng: random.Random) -> tuple[str, str]:
    k = rng.randrange(3)
    if t.family == "sum":
        a, b = t.args
        return FOREIGN[0][1][k].format(a, b), FOREIGN[0][2][k].format(a, b, a + b)
    instruction, answer = FOREIGN_GENERIC[k]
    return instruction.format(t.instruction), answer.format(t.answer)


def _near(text: str, rng: random.Random) -> str:
    edit = rng.randrange(3)
    if edit == 0:
        return "Please " + text[0].lower() + text[1:]
    if edit == 1:
        return text + " Thanks!"
    return text.lower() if text != text.lower() else text.upper()


def pool(n: int = 2000, seed: int = 0, eval_tasks: list[Task] | None = None) -> list[dict]:
    """The raw pool: rows with `domain` and, for the bench's bookkeeping only, `kind` (good or the junk)."""
    rng = random.Random(seed)
    eval_tasks = eval_tasks if eval_tasks is not None else eval_set()
    counts = {kind: round(n * share) for kind, share in JUNK_SHARES.items()}
    good = good_tasks(n - sum(counts.values()), seed, {t.key for t in eval_tasks})
    rows = [
        {"instruction": t.instruction, "output": t.answer, "domain": t.domain, "kind": "good"} for t in good
    ]
    for kind, count in counts.items():
        for _ in range(count):
            t = rng.choice(good)
            instruction, answer = t.instruction, t.answer
            if kind == "near_duplicate":
                instruction = _near(instruction, rng)
            elif kind == "truncated":
                answer = answer[: max(1, int(len(answer) * rng.uniform(0.3, 0.7)))]
            elif kind == "empty":
                answer = ""
            elif kind == "refusal":
                answer = rng.choice(REFUSALS)
            elif kind == "off_topic":
                answer = rng.choice([g for g in good if g.family != t.family]).answer
            elif kind == "wrong_language":
                instruction, answer = _foreign(t, rng)
            elif kind == "contaminated":
                e = rng.choice(eval_tasks)
                instruction, answer, t = e.instruction, e.answer, e
            rows.append({"instruction": instruction, "output": answer, "domain": t.domain, "kind": kind})
    rng.shuffle(rows)
    return rows


def prompts(n: int, seed: int, avoid: set[tuple]) -> list[dict]:
    """Unanswered instructions of every domain (a prompt pool a teacher can answer)."""
    return [{"instruction": t.instruction, "domain": t.domain} for t in good_tasks(n, seed, avoid)]


_SOLVERS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"(?:What is|Add|Compute the sum of) (\d+) (?:plus|and) (\d+)"),
     lambda m: f"{m[1]} plus {m[2]} is {int(m[1]) + int(m[2])}."),
    (re.compile(r"(?:Reverse the order of these words|Write these words backwards): ([a-z ]+)"),
     lambda m: " ".join(reversed(m[1].split()))),
    (re.compile(r"(?:Sort these words alphabetically|Put these words in alphabetical order): ([a-z ]+)"),
     lambda m: " ".join(sorted(m[1].split()))),
    (re.compile(r"(?:How many words are in this sentence|Count the words in): ([a-z ]+)"),
     lambda m: f"There are {len(m[1].split())} words."),
    (re.compile(r"letters (?:are )?in the word ([a-z]+)"), lambda m: f"The word {m[1]} has {len(m[1])} letters."),
    (re.compile(r"(?:List|Name) (\d) ([a-z]+) (?:as|in) exactly"),
     lambda m: "\n".join(f"* {x}" for x in CATEGORIES[m[2]][: int(m[1])])),
    (re.compile(r"about the word ([A-Z]+) in lowercase|Describe the word ([A-Z]+) in all lowercase"),
     lambda m: f"the word {(m[1] or m[2]).lower()} has {len(m[1] or m[2])} letters."),
    (re.compile(r"(?:Write|Repeat) the word ([a-z]+) (two|three|four) times"),
     lambda m: " ".join([m[1]] * NUMBER_WORDS.index(m[2])) + ". Done."),
]  # fmt: skip


def oracle(prompt: str) -> str:
    """A teacher that knows the task families: the right answer to any prompt that states one."""
    for pattern, solve in _SOLVERS:
        match = pattern.search(prompt)
        if match:
            return solve(match)
    return "I do not know this kind of task."
