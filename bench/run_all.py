"""`make bench`: every benchmark, each printing its figures against its peer."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    "bench.warehouse_bench",
    "bench.teacher_bench",
    "bench.filter_bench",
    "bench.semantic_bench",
    "bench.mosaic_bench",
    "bench.train_bench",
    "bench.outcome",
    "bench.scaling_runs",
    "bench.remote_warehouse",
    "bench.ray_dedup",
]

if __name__ == "__main__":
    for module in BENCHES:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], check=True)
