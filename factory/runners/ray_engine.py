"""Ray: joining a cluster, and the job folders its workers read and write.

Work on Ray never travels through the driver's memory: the driver has DuckDB write
the rows a job needs as Parquet into a scratch folder of the warehouse's data path
(a local folder, or `s3://bucket/prefix/` reached with the process's AWS
credentials, factory/store/storage.py), the workers read those files, write their
results beside them, and the driver commits the results from the files with one
DuckDB statement. The scratch folder is removed when the job ends.

A cluster is named by `--ray-address` (or $FACTORY_RAY_ADDRESS, or Ray's own
$RAY_ADDRESS); with none, a local Ray is started in-process. Ray's token (Ray's
default authentication) comes from $RAY_AUTH_TOKEN or ~/.ray/auth_token, as for
any Ray client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from factory.errors import SetupError
from factory.store import lake, storage
from factory.store.warehouse import Warehouse

ENV_ADDRESS = "FACTORY_RAY_ADDRESS"
FILE_ROWS = 65_536  # rows per Parquet file the driver writes (each a block for the workers)


_joined: dict[str, str | None] = {}  # the cluster this process joined


def address(given: str | None = None) -> str | None:
    return given or os.environ.get(ENV_ADDRESS) or os.environ.get("RAY_ADDRESS") or None


def connect(given: str | None = None) -> Any:
    """The `ray` module, connected to the cluster at the address (or a local one)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise SetupError("--engine ray needs Ray Data: pip install 'instruction-factory[ray]'") from exc
    target = address(given)
    if ray.is_initialized():
        if _joined.get("address", target) == target:
            return ray
        ray.shutdown()  # joined another cluster earlier in this process
    if target not in (None, "auto", "local"):
        _reachable(target)
    try:
        ray.init(
            address=target,
            include_dashboard=False if target is None else None,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:  # ConnectionError, auth errors, a wrong address: say what to check
        raise SetupError(
            f"cannot join the Ray cluster at {target}: {exc}. Check the address (`ray status` on the head "
            "prints it) and that $RAY_AUTH_TOKEN holds the cluster's token"
        ) from exc
    _joined["address"] = target
    # Ray's and Ray Data's progress lines would bury our summary: warnings only on the terminal (Ray
    # Data's own log file, ray-data.log in the session folder, keeps everything).
    logging.getLogger("ray").setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if not type(handler).__name__.endswith("FileHandler"):
            handler.setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Ray Data's second Parquet reader starts a pool of footer-reading actors (32 processes) for
    # every read: 20-40 s of process starts per read on a small node, for the few files a job's
    # scratch folder holds. The first reader reads the footers itself.
    context.use_datasource_v2 = False
    # That reader cuts a read into at least 200 blocks (Ray's default, for big clusters): on a small
    # one, 200 tasks a stage cost more than the work. Twice the cluster's CPUs keeps them all busy.
    context.read_op_min_num_blocks = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    return ray


# HTTP/2's connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, a Ray
# Client server) answers with a SETTINGS frame of its own; anything else does not.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4


def _reachable(target: str) -> None:
    """Fail at once on an address where no Ray head listens: nothing there, or a server that does not
    speak gRPC (Ray itself retries either for minutes, or for ever)."""
    host, _, port = target.removeprefix("ray://").rpartition(":")
    hint = "give --ray-address HOST:PORT of the head node (`ray start --head` prints it; 6379 by default)"
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=10) as conn:
            conn.settimeout(10)
            conn.sendall(_HTTP2_HELLO)
            answer = b""
            while len(answer) < 9:
                chunk = conn.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
    except (OSError, ValueError) as exc:
        raise SetupError(f"no Ray cluster at {target} ({exc}): {hint}") from exc
    if len(answer) < 9 or answer[3] != _SETTINGS:
        raise SetupError(f"{target} answers, but not as a Ray head node (it does not speak gRPC): {hint}")


class Scratch:
    """A job's folder in the warehouse's data path, shared by the driver and the workers."""

    def __init__(self, wh: Warehouse, job_id: str) -> None:
        self.url = storage.scratch_url(wh.lake.location.data_path, f"{job_id}-{uuid.uuid4().hex[:8]}")
        self.filesystem, self.root = storage.arrow_filesystem(self.url)
        self.wh = wh

    def path(self, name: str) -> str:
        """A subfolder as the workers' filesystem names it."""
        return self.root.rstrip("/") + "/" + name

    def url_of(self, name: str) -> str:
        return self.url + name

    def export(self, name: str, sql: str, params: lake.Params = None) -> str:
        """Write a query's result as Parquet files under `name` (DuckDB streams it: nothing is held
        in Python); returns the files' glob for DuckDB."""
        target = self.url_of(name)
        if not storage.is_remote(target):
            os.makedirs(target, exist_ok=True)
        self.wh.lake.execute(
            f"COPY ({sql}) TO {lake.quote(target)} (FORMAT parquet, PER_THREAD_OUTPUT false, "
            f"FILE_SIZE_BYTES '64MB', ROW_GROUP_SIZE {FILE_ROWS}, OVERWRITE_OR_IGNORE true)",
            params,
        )
        return self.glob(name)

    def glob(self, name: str) -> str:
        return self.url_of(name) + "/*.parquet"

    def read(self, ray: Any, name: str, blocks: int | None = None) -> Any:
        """A Ray dataset over the Parquet files under `name` (read by the workers)."""
        return ray.data.read_parquet(
            self.path(name),
            filesystem=self.filesystem,
            override_num_blocks=blocks,
            file_extensions=["parquet"],
        )

    def write(self, dataset: Any, name: str) -> str:
        """Have the workers write a dataset under `name`; returns the files' glob for DuckDB."""
        dataset.write_parquet(self.path(name), filesystem=self.filesystem)
        return self.glob(name)

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        info = self.filesystem.get_file_info(pafs.FileSelector(self.path(name), allow_not_found=True))
        return any(f.path.endswith(".parquet") for f in info)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.filesystem.delete_dir(self.root.rstrip("/"))


@contextlib.contextmanager
def scratch(wh: Warehouse, job_id: str) -> Iterator[Scratch]:
    folder = Scratch(wh, job_id)
    try:
        yield folder
    finally:
        folder.remove()


@dataclass
class RayJob:
    """What a filter's distributed run gets besides its rows: the cluster, the job's scratch folder,
    and the driver's warehouse connection, to export what the workers need as Parquet (never to
    hold rows in Python). Tables to append to, with the Parquet files the workers wrote, go in
    `appends` and are committed with the verdicts."""

    ray: Any
    scratch: Scratch
    warehouse: Warehouse
    run_id: str
    appends: list[tuple[str, str]] = field(default_factory=list)
