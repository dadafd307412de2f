"""The `reflect` generator: the survey's reflective teacher-student loop (Algorithm 1, eq. 31-32).

For each instruction I, documents are preprocessed (whitespace normalised, split
into chunks of about `chunk_words` words on paragraph boundaries), the chunks of
each document most similar to I are retrieved (MiniLM cosine), and they are
aggregated into a context C; the student answers I from C (R_0). Then, each
iteration t and for each difficulty level l_j, the teacher asks a question about
I at that level given the current response, the student answers it from C, the
teacher evaluates the answer (a 1-10 score and feedback), and

    A[j, t] = cos(embed(R_jt), embed(I)) x score / 10          (eq. 31)

The student reflects on all levels' feedback and revises its response. The loop
stops when ||A[:, t] - A[:, t-1]||_2 < epsilon (eq. 32) or after T iterations.
The final response becomes a row (instruction I, the context as its input); its
lineage holds the alignment matrix (levels x iterations run), whether it
converged, the first response, and the last iteration's questions, scores and
feedback. `factory alignment ROW_ID` draws the matrix as a heat map.

The context does not change between iterations (C_t = C_0): the documents are
fixed, and what changes is the student's response. All instructions advance in
lockstep, so each step is one batch of calls; every call goes through the
teacher cache, so a rerun (also after a kill) asks nothing twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from factory.errors import ConfigError
from factory.formats.readers import ReadError, jsonl_records
from factory.models.embeddings import BUNDLED
from factory.plugins import GeneratorPlugin
from factory.runners.generation import (
    GenerationSummary,
    Output,
    make_row,
    run_generator,
    template_hash,
)
from factory.store.warehouse import Warehouse
from factory.teachers.teacher import Sampling, Teacher, TeacherConfig, ask, parse_spec
from generators.distill import PromptSource, prompts

ANSWER = "Use the context to follow the instruction.\n\nContext:\n{context}\n\nInstruction: {instruction}"
QUESTION = (
    "You are a teacher checking whether a student can follow this instruction:\n{instruction}\n\n"
    "The student's current response:\n{response}\n\n"
    "Ask one {level} question that tests whether the student understood the instruction and its subject. "
    "Write only the question."
)
STUDENT_ANSWER = "Context:\n{context}\n\nQuestion: {question}\n\nAnswer the question."
EVALUATE = (
    "A student answered a {level} question.\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
    'Evaluate the answer for a {level} question. Write the first line as "Score: N" with N from 1 to 10, '
    "then feedback the student can act on."
)
REFLECT = (
    "Instruction: {instruction}\n\nContext:\n{context}\n\nYour response:\n{response}\n\n"
    "Your teacher asked you questions about it and gave this feedback:\n{feedback}\n\n"
    "Reflect on the feedback and write an improved response to the instruction. Write only the response."
)
SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl")


class ReflectConfig(PromptSource):
    documents: Path = Field(
        description="a document file or a folder of them: .txt / .md (one document each) or .jsonl (a 'text' field)"
    )
    student: str = Field("hf:embedded", description="student spec BACKEND:MODEL[@BASE_URL]")
    levels: list[str] = Field(
        default_factory=lambda: ["easy", "medium", "hard", "expert"],
        description="difficulty levels (rows of A)",
    )
    iterations: int = Field(3, ge=1, le=20, description="T: the most iterations (columns of A)")
    epsilon: float = Field(0.05, gt=0, description="stop when ||A[:,t] - A[:,t-1]||_2 is below this")
    chunk_words: int = Field(120, ge=10, description="preprocessing: words per chunk")
    top_k: int = Field(2, ge=1, description="retrieval: chunks kept per document")
    min_similarity: float = Field(
        0.1, ge=-1, le=1, description="retrieval: a chunk must be at least this similar"
    )
    context_words: int = Field(400, ge=10, description="aggregation: the context's length limit in words")
    embedding_model: str = Field(BUNDLED, description="sentence-transformers model for retrieval and A")
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="the teacher (questions, evaluation)"
    )
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=384))
    judge_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=256))

    @field_validator("levels")
    @classmethod
    def _levels(cls, levels: list[str]) -> list[str]:
        if not levels or any(not level.strip() for level in levels):
            raise ConfigError("give at least one non-empty difficulty level")
        return levels


@dataclass
class Chunk:
    document: str
    text: str


@dataclass
class Student:
    """One instruction's way through the loop."""

    instruction: str
    context: str
    sources: list[str]
    response: str = ""
    first: str = ""
    columns: list[list[float]] = field(default_factory=list)  # A[:, t] per iteration t
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    converged: bool = False
    failed: str | None = None

    @property
    def active(self) -> bool:
        return not self.converged and self.failed is None


def read_documents(path: Path) -> list[tuple[str, str]]:
    """(name, text) of every document under `path`; a JSONL document is named file:line."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DOCUMENT_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        raise ReadError(f"{path}: documents not found (give a file or a folder)")
    documents: list[tuple[str, str]] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReadError(f"{file}: cannot read it as UTF-8 text ({exc})") from exc
        if file.suffix != ".jsonl":
            documents.append((str(file), text))
            continue
        for number, record in jsonl_records(file, text):
            body = record.get("text") if isinstance(record, dict) else None
            if not isinstance(body, str):
                raise ReadError(f"{file}:{number}: field 'text': missing or not text")
            documents.append((f"{file}:{number}", body))
    documents = [(name, text) for name, text in documents if text.strip()]
    if not documents:
        raise ReadError(f"{path}: no documents with text ({', '.join(DOCUMENT_SUFFIXES)})")
    return documents


def preprocess(name: str, text: str, chunk_words: int) -> list[Chunk]:
    """Whitespace-normalised chunks of about `chunk_words` words, cut between paragraphs where possible."""
    chunks: list[Chunk] = []
    current: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        while words:
            room = chunk_words - len(current)
            if room <= 0 or (current and len(words) > room and len(words) <= chunk_words):
                chunks.append(Chunk(name, " ".join(current)))
                current = []
                continue
            current += words[:room]
            words = words[room:]
    if current:
        chunks.append(Chunk(name, " ".join(current)))
    return chunks


def retrieve(instructions: list[str], chunks: list[Chunk], cfg: ReflectConfig) -> list[tuple[str, list[str]]]:
    """Per instruction: the context (each document's top chunks, most similar first) and its documents."""
    from factory.models.embeddings import encode

    similarity = (
        encode(instructions, cfg.embedding_model) @ encode([c.text for c in chunks], cfg.embedding_model).T
    )
    documents = np.array([c.document for c in chunks])
    contexts = []
    for row in similarity:
        picked: list[int] = []
        for document in dict.fromkeys(documents):
            mine = np.flatnonzero(documents == document)
            best = mine[np.argsort(-row[mine], kind="stable")][: cfg.top_k]
            picked += [int(k) for k in best if row[k] >= cfg.min_similarity]
        parts, words, sources = [], 0, []
        for k in sorted(picked, key=lambda k: -row[k]):
            size = len(chunks[k].text.split())
            if parts and words + size > cfg.context_words:
                break
            parts.append(chunks[k].text)
            words += size
            sources.append(chunks[k].document)
        contexts.append(("\n\n".join(parts), list(dict.fromkeys(sources))))
    return contexts


def score(evaluation: str | None) -> float | None:
    """The teacher's 1-10 score from its evaluation, or None when it gave none."""
    found = SCORE.search(evaluation or "")
    return min(max(float(found.group(1)), 0.0), 10.0) if found else None


def converged(columns: list[list[float]], epsilon: float) -> bool:
    """Eq. 32: the last column of A moved less than epsilon (L2) from the one before."""
    return len(columns) >= 2 and float(np.linalg.norm(np.subtract(columns[-1], columns[-2]))) < epsilon


def reflect(
    frame: pl.DataFrame, chunks: list[Chunk], cfg: ReflectConfig, teacher: Teacher, out: Output
) -> None:
    from factory.models.embeddings import encode

    student_model = teacher.alongside(cfg.student, cfg.teacher.options)
    records = list(frame.iter_rows(named=True))
    users = [f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"] for r in records]
    students = [Student(u, context, sources) for u, (context, sources) in zip(users, retrieve(users, chunks, cfg), strict=True)]  # fmt: skip
    targets = dict(zip(users, encode(users, cfg.embedding_model), strict=True))
    for s, (answer,) in zip(students, ask(student_model, [ANSWER.format(context=s.context, instruction=s.instruction) for s in students], cfg.sampling), strict=True):  # fmt: skip
        s.response = s.first = answer or ""
        if not answer:
            s.failed = "student_failed no first response"
    levels = cfg.levels
    for _ in range(cfg.iterations):
        active = [s for s in students if s.active]
        if not active:
            break
        pairs = [(s, level) for s in active for level in levels]
        questions = [a[0] or "" for a in ask(teacher, [QUESTION.format(instruction=s.instruction, response=s.response, level=level) for s, level in pairs], cfg.sampling)]  # fmt: skip
        answers = [a[0] or "" for a in ask(student_model, [STUDENT_ANSWER.format(context=s.context, question=q) for (s, _), q in zip(pairs, questions, strict=True)], cfg.sampling)]  # fmt: skip
        evaluations = [a[0] or "" for a in ask(teacher, [EVALUATE.format(level=level, question=q, answer=a) for (_, level), q, a in zip(pairs, questions, answers, strict=True)], cfg.judge_sampling)]  # fmt: skip
        vectors = encode([a or " " for a in answers], cfg.embedding_model)
        for k, s in enumerate(active):
            mine = slice(k * len(levels), (k + 1) * len(levels))
            s.scores = [score(e) for e in evaluations[mine]]
            cosines = vectors[mine] @ targets[s.instruction]
            s.columns.append(
                [round(float(c) * (q or 0.0) / 10, 6) for c, q in zip(cosines, s.scores, strict=True)]
            )
            s.questions, s.answers, s.feedback = questions[mine], answers[mine], evaluations[mine]
        revisions = ask(student_model, [REFLECT.format(instruction=s.instruction, context=s.context, response=s.response, feedback=_feedback(s, levels)) for s in active], cfg.sampling)  # fmt: skip
        for s, (revision,) in zip(active, revisions, strict=True):
            s.response = revision or s.response
            s.converged = converged(s.columns, cfg.epsilon)
    template = template_hash("reflect", ANSWER, QUESTION, STUDENT_ANSWER, EVALUATE, REFLECT)
    for record, s in zip(records, students, strict=True):
        row = make_row("reflect", student_model.model, record["instruction"], output=s.response,
                       input=_joined(record["input"], s.context), parents=[record["id"]] if record["id"] else [],
                       template=template, params=lineage(s, cfg, f"{teacher.backend.name}:{teacher.model}"))  # fmt: skip
        if s.failed:
            out.reject(row, s.failed)
        else:
            out.rows.append(row)


def lineage(s: Student, cfg: ReflectConfig, teacher: str) -> dict:
    return {
        "levels": cfg.levels,
        "alignment": [list(c) for c in zip(*s.columns, strict=True)],  # levels x iterations
        "iterations": len(s.columns),
        "converged": s.converged,
        "epsilon": cfg.epsilon,
        "teacher": teacher,
        "student": str(parse_spec(cfg.student)),
        "documents": s.sources,
        "first_response": s.first,
        "last": [
            {"level": level, "question": q, "answer": a, "score": sc, "evaluation": f}
            for level, q, a, sc, f in zip(
                cfg.levels, s.questions, s.answers, s.scores, s.feedback, strict=False
            )
        ],
    }


def _feedback(s: Student, levels: list[str]) -> str:
    return "\n".join(f"- ({level}) {f.strip()}" for level, f in zip(levels, s.feedback, strict=True))


def _joined(input: str, context: str) -> str:
    return "\n\n".join(part for part in (input, context) if part)


def run(wh: Warehouse, config: ReflectConfig, progress: bool = False) -> GenerationSummary:
    frame = prompts(wh, config)
    chunks = [
        c
        for name, text in read_documents(config.documents)
        for c in preprocess(name, text, config.chunk_words)
    ]
    return run_generator(
        wh, "reflect", config, config.teacher, lambda t, out: reflect(frame, chunks, config, t, out), progress
    )


plugin = GeneratorPlugin(
    name="reflect",
    config=ReflectConfig,
    run=run,
    summary="reflective teacher-student loop (survey Algorithm 1): retrieved context, leveled questions, alignment matrix",
)
