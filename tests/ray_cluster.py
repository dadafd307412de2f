"""A Ray cluster of three nodes on this machine, started as a user would start one.

`ray start --head --num-cpus=0` (the head schedules nothing: every task runs on a
worker node) and two worker nodes, each `ray start --address ...` in its own process
with one CPU, token authentication on (Ray's default), the dashboard on 127.0.0.1 for
the state API. Tests connect with `--engine ray --ray-address ADDRESS` and ask the
state API which nodes ran their tasks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import free_port

RAY = Path(sys.executable).with_name("ray")


def auth() -> None:
    """Token authentication for this process and the nodes it starts; set before Ray is imported
    anywhere in the process (Ray reads it then), so tests/conftest.py calls it at import."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


class RayCluster:
    def __init__(
        self,
        folder: Path,
        workers: int = 2,
        cpus_per_worker: int = 1,
        worker_ray: Path = RAY,
        gpus_per_worker: int = 0,
    ) -> None:
        """`worker_ray` is the `ray` command the workers start with (another environment's: its Python
        runs their tasks); `gpus_per_worker` declares GPUs (Ray schedules by the count, not the device)."""
        if not RAY.exists():
            raise RuntimeError(
                f"Ray's command line is missing ({RAY}): pip install 'instruction-factory[ray]'"
            )
        self.folder = folder
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # The token goes to every node and to this process (drivers and the state API need it).
        auth()
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        self.env = dict(os.environ)
        # A short temp folder: Ray's socket paths must stay under the 107-byte limit.
        self.temp = Path(f"/tmp/ray-{self.port}")
        self.nodes: list[subprocess.Popen] = []
        self.last_error: Exception | None = None
        self._start(
            "--head",
            "--num-cpus=0",
            f"--port={self.port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp}",
            "--disable-usage-stats",
        )
        self._wait(1)
        for k in range(workers):  # one at a time: two raylets starting at once on 2 cores time out
            gpus = [f"--num-gpus={gpus_per_worker}"] if gpus_per_worker else []
            self._start(f"--address={self.address}", f"--num-cpus={cpus_per_worker}", *gpus, ray=worker_ray)
            self.head_id, self.worker_ids = self._wait(k + 2)

    def _start(self, *args: str, ray: Path = RAY) -> None:
        """One node, `ray start --block` in its own process group (stopped with the group, so a
        cluster of another session on this machine is left alone)."""
        log = open(self.folder / f"ray-node-{len(self.nodes)}.log", "w")  # noqa: SIM115 (kept open for the node)
        self.nodes.append(
            subprocess.Popen(
                [str(ray), "start", "--block", "--node-ip-address=127.0.0.1", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def _wait(self, expected: int) -> tuple[str, list[str]]:
        """The head's node id and the workers', once all have joined (from the state API)."""
        from ray.util.state import list_nodes

        deadline = time.monotonic() + 180
        while True:
            try:
                alive = [n for n in list_nodes(address=self.dashboard, timeout=10) if n.state == "ALIVE"]
            except Exception as exc:  # the dashboard is not up yet
                self.last_error, alive = exc, []
            if len(alive) >= expected:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.nodes):
                self.stop()
                logs = "\n".join(p.read_text()[-1500:] for p in sorted(self.folder.glob("ray-node-*.log")))
                raise RuntimeError(
                    f"only {len(alive)} of {expected} Ray nodes joined ({self.last_error}):\n{logs}"
                )
            time.sleep(0.5)
        head = [n.node_id for n in alive if n.is_head_node]
        return head[0], [n.node_id for n in alive if not n.is_head_node]

    def tasks_by_node(self, name_contains: str = "") -> dict[str, int]:
        """How many finished tasks each node ran, from the state API: those whose name contains the
        text (actor methods included, e.g. `TeacherActor.run`), or with no text every plain task
        (Ray Data's bookkeeping actors live on the head and run actor tasks there)."""
        from ray.util.state import list_tasks

        tasks = list_tasks(address=self.dashboard, limit=10_000, raise_on_missing_output=False, timeout=60)
        counts: dict[str, int] = {}
        for task in tasks:
            wanted = name_contains in (task.name or "") if name_contains else task.type == "NORMAL_TASK"
            if task.node_id and wanted and task.state == "FINISHED":
                counts[task.node_id] = counts.get(task.node_id, 0) + 1
        return counts

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(timeout=5)  # a node drains for up to 30 s: not needed at the end of a session
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(self.temp, ignore_errors=True)
