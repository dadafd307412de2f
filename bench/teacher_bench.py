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
4. Client overhead: `factory generate distill` end to end (the CLI in its own process,
   prompts imported into a fresh warehouse beforehand and not timed) against a bare
   `AsyncOpenAI` loop with a semaphore (also its own process), both asking the same fresh
   prompts at concurrency 32 of a server that answers in well under a millisecond (h11 on
   asyncio, in a third process), so what is measured is our per-call cost, which a slow
   server hides. Target: time ratio bare/ours >= 0.9 at 3,000 and 30,000 prompts.

Run: `make bench` (or `python -m bench.teacher_bench`); part 1 needs `make vllm-env`.
Part 4 alone: `python -m bench.teacher_bench --only overhead --overhead-sizes 3000,30000`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
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


class _FastProtocol(asyncio.Protocol):
    """One keep-alive connection of the fast server: h11 parses, the answer is built inline."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import h11

        self.h11 = h11
        self.transport = transport
        self.conn = h11.Connection(h11.SERVER)
        self.target = b""
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        h11 = self.h11
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.target, self.body = event.target, []
            elif isinstance(event, h11.Data):
                self.body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
                self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _answer(self) -> None:
        h11 = self.h11
        request = json.loads(b"".join(self.body))
        chat = self.target.endswith(b"/chat/completions")
        prompt = request["messages"][-1]["content"] if chat else request["prompt"]
        text = "Answer: " + prompt[-40:]
        n = int(request.get("n") or 1)
        if chat:
            choices = [
                {"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for k in range(n)
            ]
        else:
            choices = [
                {"index": k, "text": text, "finish_reason": "stop", "logprobs": None} for k in range(n)
            ]
        words = len(text.split())
        body = json.dumps({
            "id": "cmpl-fast", "object": "chat.completion" if chat else "text_completion", "created": 0,
            "model": request.get("model", "fast"), "choices": choices,
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": words * n,
                      "total_tokens": len(prompt.split()) + words * n},
        }).encode()  # fmt: skip
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        self.transport.write(
            self.conn.send(h11.Response(status_code=200, headers=headers))
            + self.conn.send(h11.Data(data=body))
            + self.conn.send(h11.EndOfMessage())
        )


def serve_fast(port: int) -> None:
    """The fast OpenAI-compatible server (`--serve-fast PORT`), until killed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_FastProtocol, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _bare_chat(url: str, prompts: list[str], concurrency: int) -> int:
    """The peer: the official client, a semaphore, the same request our openai backend sends."""
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    gate = asyncio.Semaphore(concurrency)
    answered = 0

    async def one(prompt: str) -> None:
        nonlocal answered
        async with gate:
            r = await client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": prompt}], n=1, temperature=0.7,
                top_p=1.0, max_tokens=512, presence_penalty=0.0, frequency_penalty=0.0,
            )  # fmt: skip
            answered += r.choices[0].message.content is not None

    await asyncio.gather(*(one(p) for p in prompts))
    await client.close()
    return answered


def bare_worker(url: str, prompts_file: str, concurrency: int) -> None:
    """`--bare-worker URL FILE CONCURRENCY`: the peer as its own process (imports included)."""
    prompts = [json.loads(line)["instruction"] for line in Path(prompts_file).read_text().splitlines()]
    answered = asyncio.run(_bare_chat(url, prompts, concurrency))
    if answered != len(prompts):
        raise SystemExit(f"bare loop: {answered} answers for {len(prompts)} prompts")


def _timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def overhead(sizes: list[int], concurrency: int, trials: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.teacher_bench", "--serve-fast", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise SystemExit("the fast server did not start")
        warm = work / "warm.jsonl"
        warm.write_text("".join(json.dumps({"instruction": f"warm up {i}"}) + "\n" for i in range(256)))
        _timed(
            [sys.executable, "-m", "bench.teacher_bench", "--bare-worker", url, str(warm), str(concurrency)]
        )
        for size in sizes:
            results: dict[str, list[float]] = {"ours": [], "bare": []}
            for trial in range(trials):
                prompts = work / f"prompts-{size}-{trial}.jsonl"
                prompts.write_text("".join(
                    json.dumps({"instruction": f"Trial {trial} prompt {i}: explain idea {i * 7919 % 1000} in a sentence.", "input": "", "output": "-"}) + "\n"
                    for i in range(size)
                ))  # fmt: skip
                folder = work / f"wh-{size}-{trial}"
                wh = factory.init(str(folder))  # not timed: the prompts are in the warehouse before
                factory.import_file(wh, prompts, source="prompts")
                wh.create_snapshot("prompts")
                wh.close()
                for who in ("bare", "ours") if trial % 2 == 0 else ("ours", "bare"):
                    if who == "bare":
                        command = [sys.executable, "-m", "bench.teacher_bench", "--bare-worker", url,
                                   str(prompts), str(concurrency)]  # fmt: skip
                        elapsed, _ = _timed(command)
                    else:
                        command = [sys.executable, "-m", "factory.cli", "generate", "distill", "--warehouse",
                                   str(folder), "--on", "prompts", "--teacher", f"openai:fast@{url}",
                                   "--concurrency", str(concurrency), "--quiet"]  # fmt: skip
                        elapsed, out = _timed(command)
                        if f"accepted {size:,} row(s)" not in out:
                            raise SystemExit(f"distill did not accept every prompt:\n{out}")
                    results[who].append(elapsed)
                shutil.rmtree(folder, ignore_errors=True)
            ours, bare = statistics.median(results["ours"]), statistics.median(results["bare"])
            print(
                f"4. client overhead, distill of {size:,} prompts at concurrency {concurrency} against a "
                f"sub-millisecond server, {trials} alternating runs each: factory generate distill "
                f"{ours:.2f} s, bare AsyncOpenAI + semaphore {bare:.2f} s (medians), ratio {bare / ours:.2f} "
                f"(target >= 0.9); every run: ours {[round(x, 2) for x in results['ours']]}, "
                f"bare {[round(x, 2) for x in results['bare']]}",
                flush=True,
            )
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-fast"]:
        serve_fast(int(sys.argv[2]))
        raise SystemExit(0)
    if sys.argv[1:2] == ["--bare-worker"]:
        bare_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        raise SystemExit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--replay", type=int, default=10_000)
    parser.add_argument("--only", choices=("replay", "similarity", "throughput", "overhead"))
    parser.add_argument("--overhead-sizes", default="3000,30000", help="prompt counts of part 4")
    parser.add_argument(
        "--overhead-trials", type=int, default=3, help="alternating runs of each side, part 4"
    )
    args, _ = parser.parse_known_args()
    OUT.mkdir(exist_ok=True)
    if args.only in (None, "replay"):
        cache_replay(args.replay)
    if args.only in (None, "similarity"):
        similarity(5_000, 200)
        similarity(50_000, 40)
    if args.only in (None, "throughput"):
        throughput(args.requests, args.concurrency, args.max_tokens)
    if args.only in (None, "overhead"):
        sizes = [int(x) for x in args.overhead_sizes.split(",")]
        overhead(sizes, args.concurrency, args.overhead_trials)
