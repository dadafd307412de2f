"""Teacher-layer benchmarks, each against its peer in the same script.

1. Throughput: our openai backend (cache, journal, retries, budgets) against the bare
   `openai` async client, both driving the same local vLLM CPU server (the tiny
   model from the tests) at the same concurrency with the same fresh prompts.
   Target: tokens/s ratio >= 0.95.
2. Cache replay: 10k answered calls asked again. Target: >= 5k calls/s.
3. Self-Instruct similarity: the indexed ROUGE-L filter against the original linear
   scan (rouge_score's LCS over every pool member) on a fixed candidate stream, at
   pools of 5k and 50k instructions: the decisions must be identical; the speed-up
   is printed. Target: >= 50x at 50k.

Run: `make bench` (or `python -m bench.teacher_bench`); part 1 needs `make vllm-env`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import openai

import factory
from factory.evaluation.rouge import RougeIndex, tokenize
from factory.store import jobs
from factory.teachers.call_cache import CallCache, call_key
from factory.teachers.teacher import Request, Sampling, Teacher, TeacherOptions, make_backend, parse_spec

OUT = Path("bench-out")


async def _bare(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> int:
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(prompt: str) -> None:
        nonlocal tokens
        async with gate:
            r = await client.completions.create(
                model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=1.0, top_p=1.0,
                presence_penalty=0.0, frequency_penalty=0.0, n=1,
            )  # fmt: skip
            tokens += r.usage.completion_tokens

    await asyncio.gather(*(one(p) for p in prompts))
    await client.close()
    return tokens


def throughput(requests: int, concurrency: int, max_tokens: int, trials: int = 6) -> None:
    from tests.servers import VLLM_PYTHON, VLLMServer
    from tests.tiny_model import build

    if not VLLM_PYTHON.exists():
        print("1. throughput: skipped, no .venv-vllm (run `make vllm-env`)")
        return
    work = Path(tempfile.mkdtemp(prefix="teacher-bench-"))
    model = build(OUT / "tiny-model")
    server = VLLMServer(model, "tiny", work / "server").wait()
    try:
        asyncio.run(_bare(server.url, [f"warm up {i}" for i in range(64)], concurrency, max_tokens))
        results: dict[str, list[float]] = {"ours": [], "bare": []}
        for trial in range(trials):
            for who in ("bare", "ours") if trial % 2 == 0 else ("ours", "bare"):
                prompts = [f"{who} {trial} prompt {i}: write about the city" for i in range(requests)]
                if who == "bare":
                    started = time.perf_counter()
                    tokens = asyncio.run(_bare(server.url, prompts, concurrency, max_tokens))
                else:  # the warehouse and job exist before; the timed part is generate + commit
                    wh = factory.init(work / f"wh-{trial}")
                    job = jobs.start(wh, "generate", "bench", {})
                    options = TeacherOptions(concurrency=concurrency)
                    teacher = Teacher(make_backend(parse_spec(f"openai:tiny@{server.url}"), options),
                                      CallCache(wh, job))  # fmt: skip
                    sampling = Sampling(max_tokens=max_tokens)
                    started = time.perf_counter()
                    teacher.generate([Request(prompt=p, sampling=sampling) for p in prompts])
                    teacher.close()
                    tokens = teacher.stats.completion_tokens
                results[who].append(tokens / (time.perf_counter() - started))
                if who == "ours":
                    wh.close()
        ours, bare = statistics.median(results["ours"]), statistics.median(results["bare"])
        print(
            f"1. throughput, {requests} requests x {max_tokens} tokens at concurrency {concurrency}, "
            f"{trials} alternating runs each: ours {ours:,.0f} tokens/s, bare openai {bare:,.0f} tokens/s "
            f"(medians), ratio {ours / bare:.2f} (target >= 0.95); every run: ours "
            f"{[round(x) for x in results['ours']]}, bare {[round(x) for x in results['bare']]}"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def cache_replay(calls: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    try:
        wh = factory.init(work / "wh")
        job = jobs.start(wh, "generate", "bench", {})
        cache = CallCache(wh, job)
        requests = [
            Request(prompt=f"cached prompt {i}", sampling=Sampling(max_tokens=16)) for i in range(calls)
        ]
        params = requests[0].sampling.model_dump_json()
        for r in requests:  # as if a teacher had answered them before
            key = call_key("openai", "m", params, r.text, 0)
            cache.record({"key": key, "backend": "openai", "model": "m", "params": params, "prompt": r.text,
                          "sample": 0, "response": "answer " + r.text, "finish_reason": "stop"})  # fmt: skip
        cache.close()
        job2 = jobs.start(wh, "generate", "bench", {})
        teacher = Teacher(make_backend(parse_spec("openai:m@http://127.0.0.1:9/v1"), TeacherOptions()),
                          CallCache(wh, job2))  # fmt: skip
        started = time.perf_counter()
        answers = teacher.generate(requests)
        elapsed = time.perf_counter() - started
        assert teacher.stats.cache_hits == calls and teacher.stats.calls == 0
        assert answers[7][0].text == "answer cached prompt 7"
        teacher.close()
        print(f"2. cache replay of {calls:,} calls: {calls / elapsed:,.0f} calls/s (target >= 5,000)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


VERBS = (
    "write explain list describe summarise translate classify compare suggest create give name find".split()
)
TOPICS = ("the water cycle", "a short poem", "three fruits", "the stock market", "a cover letter", "climate",
          "a python function", "the French revolution", "healthy breakfasts", "a travel plan", "prime numbers",
          "a product review", "the rules of chess", "machine learning", "a birthday message")  # fmt: skip
WORDS = ("simple detailed brief formal casual funny short long clear for children for experts in one sentence "
         "with examples step by step using bullet points in a table about history about science").split()  # fmt: skip


def _instruction(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(2, 10))
    return f"{rng.choice(VERBS).capitalize()} {rng.choice(TOPICS)} {' '.join(words)}."


def _near_copy(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def similarity(pool_size: int, candidates: int) -> None:
    from rouge_score import rouge_scorer

    rng = random.Random(pool_size)
    pool = [_instruction(rng) for _ in range(pool_size)]
    stream = [_near_copy(rng.choice(pool), rng) if k % 2 else _instruction(rng) for k in range(candidates)]
    index = RougeIndex(0.7)
    for text in pool:
        index.add(text)
    tokens = [tokenize(t) for t in pool]
    linear_decisions, index_decisions = [], []
    linear_s = index_s = 0.0
    for text in stream:
        started = time.perf_counter()
        new = tokenize(text)
        rejected = any(rouge_scorer._score_lcs(new, other).fmeasure > 0.7 for other in tokens)
        linear_s += time.perf_counter() - started
        started = time.perf_counter()
        match = index.too_similar(text)
        index_s += time.perf_counter() - started
        linear_decisions.append(rejected)
        index_decisions.append(match is not None)
        if not rejected:  # accepted: joins the pool of both
            tokens.append(new)
        if match is None:
            index.add(text)
    same = linear_decisions == index_decisions
    print(
        f"3. Self-Instruct ROUGE-L filter, pool {pool_size:,}, {candidates} candidates "
        f"({sum(linear_decisions)} rejected): linear {linear_s / candidates * 1000:,.1f} ms/candidate, "
        f"indexed {index_s / candidates * 1000:,.2f} ms/candidate, speed-up {linear_s / index_s:,.0f}x "
        f"(target >= 50x at 50k); identical decisions: {same}"
    )
    if not same:
        raise SystemExit("the indexed filter disagreed with the linear scan")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--replay", type=int, default=10_000)
    args, _ = parser.parse_known_args()
    OUT.mkdir(exist_ok=True)
    cache_replay(args.replay)
    similarity(5_000, 200)
    similarity(50_000, 40)
    throughput(args.requests, args.concurrency, args.max_tokens)
