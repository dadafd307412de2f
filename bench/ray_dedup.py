"""MinHash and exact dedup on Ray Data (`--engine ray`) against the in-process engine.

On the realistic corpus (bench/corpus.py: templated passages, copies up to case and
spacing, near-copies) at each size: the same rows in two warehouses, one judged
in-process and one on a Ray cluster started as a user starts one (tests/ray_cluster.py:
a head with no CPUs and two one-CPU worker nodes on this machine). Each run is its own
driver process (what `factory filter` is); the bench samples that process's resident
memory every 20 ms and reports its peak, and the run's wall time (inside the process,
around `factory.filter`). The kept sets must be the same (asserted).

The point of the Ray engine is the driver: in-process, the driver holds every row and
its shingles, so its peak grows with the rows; on Ray it holds counts and object
references, so its peak stays flat. On one 2-core machine the cluster is slower than
the in-process engine (the same cores, plus serialisation and shuffles); the scale-out
is across machines.

Run: `python -m bench.ray_dedup --rows 250000 500000 1000000` (`make bench` runs it at 250,000).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench import corpus as realistic

FILTERS = ("minhash", "exact")


def _driver(warehouse: str, name: str, engine: str, address: str | None) -> None:
    """One filter run in this process (the measured driver); prints its seconds and counts."""
    import factory

    wh = factory.open(warehouse)
    started = time.perf_counter()
    summary = factory.filter(wh, name, engine=engine, ray_address=address)
    elapsed = time.perf_counter() - started
    wh.close()
    print(json.dumps({"seconds": elapsed, "candidates": summary.candidates, "kept": summary.kept}))


def measured(warehouse: str, name: str, engine: str, address: str | None) -> dict:
    """Run one filter as its own driver process; its result and the process's peak RSS (MB)."""
    command = [sys.executable, "-m", "bench.ray_dedup", "--driver", warehouse, name, engine, address or ""]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0]

    def sample() -> None:
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak[0] = max(peak[0], watched.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mb": peak[0] / 2**20}


def kept_ids(warehouse: str, name: str) -> set[str]:
    import factory

    wh = factory.open(warehouse, read_only=True)
    ids = wh.sql("SELECT id FROM verdicts WHERE filter = ? AND keep", [name])["id"].to_list()
    wh.close()
    return set(ids)


def main(sizes: list[int]) -> None:
    import factory
    from tests.ray_cluster import RayCluster

    with tempfile.TemporaryDirectory(dir=".") as folder:
        cluster = RayCluster(Path(folder))
        try:
            print(f"cluster: head (0 CPUs) + {len(cluster.worker_ids)} one-CPU workers at {cluster.address}")
            header = "| rows | filter | kept | local s | ray s | local driver peak MB | ray driver peak MB |"
            lines = [header, "|---|---|---|---|---|---|---|"]
            for rows in sizes:
                path = realistic.write_jsonl(rows)
                local, ray = f"{folder}/local-{rows}", f"{folder}/ray-{rows}"
                wh = factory.init(local)
                factory.import_file(wh, str(path))
                wh.close()
                shutil.copytree(local, ray)
                for name in FILTERS:
                    here = measured(local, name, "local", None)
                    there = measured(ray, name, "ray", cluster.address)
                    same = kept_ids(local, name) == kept_ids(ray, name)
                    assert same, f"{name} at {rows} rows: the kept sets differ"
                    line = (
                        f"| {here['candidates']:,} | {name} | {here['kept']:,} | {here['seconds']:.1f} | "
                        f"{there['seconds']:.1f} | {here['peak_mb']:,.0f} | {there['peak_mb']:,.0f} |"
                    )
                    lines.append(line)
                    print(line, flush=True)
                shutil.rmtree(local)
                shutil.rmtree(ray)
            print("\n".join(["", *lines, "", "same kept set on both engines: asserted at every size"]))
        finally:
            cluster.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--driver"]:
        _driver(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] or None)
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000])
    main(parser.parse_args().rows)
