"""Shared fixtures: a real DuckLake warehouse in a temp folder, and small data-file writers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import factory
from tests.ray_cluster import auth

auth()  # before any test module imports ray


# Session servers that cost CPU while idle (vLLM's engine, Ray's raylets, log monitors and GCS):
# the modules that use one run one after the other, and it stops after its last test.
IDLE_COSTLY = ("vllm_server", "ray_cluster")
_LAST_USER: dict[str, str] = {}  # fixture name -> node id of the last test that uses it
_RUNNING: dict[str, Callable[[], None]] = {}  # fixture name -> how to stop it


def pytest_collection_modifyitems(config, items):
    """Modules that share an idle-costly server together (a module is never split, so its module
    fixtures start once); the ecosystem tests last: `make test` installs their tools meanwhile."""
    used: dict[Path, set[str]] = {}
    for item in items:
        used.setdefault(item.path, set()).update(n for n in IDLE_COSTLY if n in item.fixturenames)
    first_seen = {path: k for k, path in enumerate(dict.fromkeys(item.path for item in items))}

    def order(item) -> tuple:
        servers = tuple(n in used[item.path] for n in IDLE_COSTLY)
        return (item.get_closest_marker("ecosystem") is not None, servers, first_seen[item.path])

    items.sort(key=order)


def pytest_collection_finish(session):
    _LAST_USER.clear()
    for item in session.items:  # after -k / -m deselection
        _LAST_USER.update({n: item.nodeid for n in IDLE_COSTLY if n in item.fixturenames})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    for name, last in _LAST_USER.items():
        if last == item.nodeid and name in _RUNNING:
            _RUNNING.pop(name)()
    return result


@contextlib.contextmanager
def stopped_after_its_last_test(name: str, stop: Callable[[], None]) -> Iterator[None]:
    """A session server's life: stopped after the last test that uses it, or with the session."""
    _RUNNING[name] = stop
    try:
        yield
    finally:
        if name in _RUNNING:
            _RUNNING.pop(name)()


@pytest.fixture
def wh(tmp_path: Path):
    warehouse = factory.init(tmp_path / "wh")
    yield warehouse
    warehouse.close()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file in a folder (the writers' lock files aside): to show nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def alpaca(n: int, prefix: str = "task") -> list[dict]:
    return [
        {
            "instruction": f"{prefix} {i}: say the number",
            "input": "" if i % 2 else f"n={i}",
            "output": f"The number is {i}.",
        }
        for i in range(n)
    ]


def import_command(data: Path, warehouse: Path, *extra: str) -> list[str]:
    """`factory import` as a user would run it, without a progress bar."""
    return [
        sys.executable,
        "-m",
        "factory.cli",
        "import",
        str(data),
        "--warehouse",
        str(warehouse),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a trained BPE tokenizer and a chat template (built once per session)."""
    import torch

    from tests.tiny_model import build

    torch.set_num_threads(1)
    return build(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """vLLM's real OpenAI-compatible server on the CPU, serving the tiny model as 'tiny'."""
    from tests.installs import vllm_python
    from tests.servers import VLLMServer

    vllm_python()  # waits for make test's background install of it
    server = VLLMServer(tiny_model, "tiny", tmp_path_factory.mktemp("vllm"), max_model_len=2048).wait()
    with stopped_after_its_last_test("vllm_server", server.stop):
        yield server


# -- remote warehouses: a PostgreSQL catalog and data files in S3 (moto) ---------------------------


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL cluster for the session (Debian's postgresql package; make test installs it)."""
    from tests.servers import PG_BIN, PostgresServer

    if not PG_BIN:
        pytest.fail(
            "the PostgreSQL catalog tests need Debian's postgresql package (/usr/lib/postgresql/*/bin/initdb): "
            "run `make test`, or apt-get install postgresql as root"
        )
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server in its own process, for the session."""
    from tests.servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


class RemoteStore:
    """A fresh catalog database and a fresh bucket prefix: where one remote warehouse lives."""

    def __init__(self, pg_server, s3_server) -> None:
        import uuid

        tag = uuid.uuid4().hex[:12]
        self.pg, self.s3 = pg_server, s3_server
        self.database = pg_server.create_database(f"wh_{tag}")
        self.bucket = s3_server.create_bucket(f"factory-{tag}")
        self.prefix = "lake/"
        self.catalog = pg_server.catalog(self.database)
        self.data_path = f"s3://{self.bucket}/{self.prefix}"

    def keys(self) -> list[str]:
        """Every object under the warehouse's prefix."""
        return self.s3.keys(self.bucket, self.prefix)

    def init(self, folder: Path):
        return factory.init(folder, catalog=self.catalog, data_path=self.data_path)


def remote_env(monkeypatch, s3_server) -> None:
    """The S3 server's AWS variables in this process (and the processes it starts)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("FACTORY_CATALOG", "FACTORY_DATA_PATH", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def remote_store(pg_server, s3_server, monkeypatch) -> RemoteStore:
    """A fresh PostgreSQL database and S3 prefix, with the AWS variables set for this test."""
    remote_env(monkeypatch, s3_server)
    return RemoteStore(pg_server, s3_server)


BACKENDS = ["local", "pg+s3"]


def make_warehouse(request, folder: Path, backend: str):
    """A new warehouse in `folder`: the default layout, or a PostgreSQL catalog with data in S3."""
    if backend == "local":
        return factory.init(folder)
    return request.getfixturevalue("remote_store").init(folder)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray cluster of a head (no CPUs) and two one-CPU worker nodes, started once per session."""
    from tests.ray_cluster import RayCluster

    cluster = RayCluster(tmp_path_factory.mktemp("ray"))

    def stop() -> None:
        import ray

        ray.shutdown()
        cluster.stop()

    with stopped_after_its_last_test("ray_cluster", stop):
        yield cluster
