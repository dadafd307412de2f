"""What the dedup filters share on Ray Data: cutting the contenders into parts that never
share a duplicate, so that each part is judged by the filter's own in-process rule.

A dedup's rule compares a row only with rows that have its key (exact) or share one of
its LSH buckets (MinHash), so the rows can be cut into parts that no key or bucket
crosses and each part judged alone, in contender order (`_seq`): its verdicts are the
ones the whole table would get. The parts are hash partitions of a Ray Data shuffle
(`groupby` on a partition number, `map_groups`), a few tens of thousands of rows each,
so the rule runs once a partition over arrays, not once a key.

- Exact (`by_key`): a row's partition is a hash of its 128-bit key hash.
- Near-duplicates (`by_component`): each block's rows give their LSH bucket keys; a
  shuffle on the bucket links the rows of a bucket (a star from its first row, reduced to
  a forest within the partition); one Ray task joins those links into connected
  components (union-find) and sends back a partition number per contender (an int32
  array of one entry a row, in the object store); rows in no shared bucket are `unique`
  at once, and the others are shuffled by their component's partition and judged there.

The driver submits the pipeline and holds object references and counts, never rows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numba
import numpy as np
import polars as pl
import pyarrow as pa

PART_ROWS = 50_000  # contenders a partition holds on average
MIN_PARTS = 4  # even a small job is spread over several tasks (and nodes)
MAX_PARTS = 4096
VERDICTS = pa.schema(
    [("id", pa.large_string()), ("keep", pa.bool_()), ("score", pa.float64()), ("reason", pa.large_string())]
)


def partitions(rows: int) -> int:
    """How many partitions a shuffle of `rows` contenders uses."""
    return int(min(MAX_PARTS, max(MIN_PARTS, -(-rows // PART_ROWS))))


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64: every bit of the input moves every bit out."""
    x = np.asarray(values).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def part_of(values: np.ndarray, parts: int) -> np.ndarray:
    """The partition (0..parts - 1, int32) of each hash or id."""
    return (mix(values) % np.uint64(parts)).astype(np.int32)


def as_verdicts(frame: pl.DataFrame) -> pa.Table:
    """A verdict frame (id, keep, score, reason) as the one Arrow schema every part writes."""
    return frame.select("id", "keep", pl.col("score").cast(pl.Float64), "reason").to_arrow().cast(VERDICTS)


def _frame(batch: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _sorting(dataset: Any) -> Any:
    """The dataset with a DataContext of its own whose shuffles sort (Ray tasks, as groupby did
    before Ray 2.4x): the default hash shuffle starts aggregator actors, which cost 5-10 s a
    shuffle at any size (a 1,500-row MinHash job: 25 s against 5 s)."""
    from ray.data.context import ShuffleStrategy

    context = dataset.context.copy()
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    dataset._context = context  # no public setter; a derived dataset shares its parent's context
    return dataset


def _judge_part(batch: pa.Table, judge: Callable[[pl.DataFrame], pl.DataFrame]) -> pa.Table:
    """One partition's contenders, in contender order, through the filter's in-process rule."""
    return as_verdicts(judge(_frame(batch).sort("_seq")))


def _grouped(dataset: Any, parts: int, judge: Callable[[pl.DataFrame], pl.DataFrame]) -> Any:
    """Verdicts of the contenders shuffled by `_part`, each partition judged as a whole."""
    return dataset.groupby("_part", num_partitions=parts).map_groups(
        partial(_judge_part, judge=judge), batch_format="pyarrow"
    )


# -- exact keys ------------------------------------------------------------------------------------


def _hashed(batch: pa.Table, hashes: Callable[[pl.DataFrame], list[pl.Series]], parts: int) -> pa.Table:
    frame = _frame(batch)
    first, second = hashes(frame)
    return pl.DataFrame(
        [frame["id"], frame["_rank"], frame["_seq"], first, second,
         pl.Series("_part", part_of(first.to_numpy(), parts))]
    ).to_arrow()  # fmt: skip


def by_key(
    contenders: Any,
    hashes: Callable[[pl.DataFrame], list[pl.Series]],
    judge: Callable[[pl.DataFrame], pl.DataFrame],
) -> Any:
    """Verdicts of a dedup on a key: `hashes` gives a block's key hash columns (`_h1` first), rows
    with the same hash meet in one partition, judged there by `judge` (id, _rank, _seq, hashes)."""
    parts = partitions(contenders.count())
    keyed = _sorting(
        contenders.map_batches(partial(_hashed, hashes=hashes, parts=parts), batch_format="pyarrow")
    )
    return _grouped(keyed, parts, judge)


# -- connected components of LSH buckets -----------------------------------------------------------


@numba.njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


@numba.njit(cache=True)
def _forest(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over nodes 0..size - 1 joined by the edges (a, b); each node's root, the smallest
    node of its component."""
    parent = np.arange(size)
    for k in range(len(a)):
        ra, rb = _find(parent, a[k]), _find(parent, b[k])
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb
    for x in range(size):
        parent[x] = _find(parent, x)
    return parent


def _links(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows of a partition's buckets joined: (row, root) for every row whose root is another row."""
    bucket, seq = batch["_bucket"], batch["_seq"]
    order = np.lexsort((seq, bucket))
    bucket, seq = bucket[order], seq[order]
    first = np.ones(len(seq), np.bool_)
    first[1:] = bucket[1:] != bucket[:-1]
    head = seq[np.maximum.accumulate(np.where(first, np.arange(len(seq)), 0))]
    a, b = head[~first], seq[~first]  # a star from each bucket's first row (in contender order)
    nodes, local = np.unique(np.concatenate((a, b)), return_inverse=True)
    root = _forest(len(nodes), local[: len(a)], local[len(a) :])
    linked = root != np.arange(len(nodes))
    return {"a": nodes[root[linked]], "b": nodes[linked]}


def _bucket_rows(
    batch: pa.Table, keys: Callable[[pl.DataFrame], tuple[np.ndarray, np.ndarray]], parts: int
) -> pa.Table:
    """Each contender's LSH bucket keys, one row per (bucket, contender); rows without any are left out."""
    frame = _frame(batch)
    band_keys, live = keys(frame)  # (bands, rows) uint64, (rows,) bool
    seq = frame["_seq"].to_numpy()
    bands = np.arange(band_keys.shape[0], dtype=np.uint64)[:, None]
    # One 64-bit bucket per (band, key): two bands' keys that met here would only join two
    # components, which changes how rows are cut, never a verdict.
    bucket = mix(band_keys[:, live] ^ mix(bands + np.uint64(1))).ravel()
    return pa.table(
        {
            "_bucket": bucket,
            "_seq": np.broadcast_to(seq[live], (len(bands), int(live.sum()))).ravel(),
            "_part": part_of(bucket, parts),
        }
    )


def _components(parts: int, *links: pa.Table) -> np.ndarray:
    """A Ray task: the partition of each contender's component (by `_seq`), -1 when it shares no
    bucket with another row."""
    a = np.concatenate([t["a"].to_numpy() for t in links if t.num_rows] or [np.zeros(0, np.int64)])
    b = np.concatenate([t["b"].to_numpy() for t in links if t.num_rows] or [np.zeros(0, np.int64)])
    size = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    root = _forest(size, a.astype(np.int64), b.astype(np.int64))
    linked = np.zeros(size, np.bool_)
    linked[a] = True
    linked[b] = True
    return np.where(linked, part_of(root, parts), -1).astype(np.int32)


def _labelled(seq: np.ndarray, labels: list[Any]) -> np.ndarray:
    import ray

    label = ray.get(labels[0])
    part = np.full(len(seq), -1, np.int32)
    inside = seq < len(label)
    part[inside] = label[seq[inside]]
    return part


def _alone(batch: pa.Table, labels: list[Any]) -> pa.Table:
    """Candidates that share no bucket with another contender: unique."""
    part = _labelled(batch["_seq"].to_numpy(), labels)
    ids = batch["id"].filter(pa.array((part < 0) & (batch["_rank"].to_numpy() == 1)))
    return pa.table(
        [ids, pa.repeat(True, len(ids)), pa.nulls(len(ids), pa.float64()), pa.repeat("unique", len(ids))],
        schema=pa.schema([(f.name, f.type if f.name != "id" else ids.type) for f in VERDICTS]),
    ).cast(VERDICTS)


def _joined(batch: pa.Table, labels: list[Any]) -> pa.Table:
    """Contenders that share a bucket with another, with their component's partition."""
    part = _labelled(batch["_seq"].to_numpy(), labels)
    return batch.append_column("_part", pa.array(part)).filter(pa.array(part >= 0))


def by_component(
    contenders: Any,
    keys: Callable[[pl.DataFrame], tuple[np.ndarray, np.ndarray]],
    judge: Callable[[pl.DataFrame], pl.DataFrame],
    ray: Any,
) -> Any:
    """Verdicts of a near-duplicate dedup: `keys` gives a block's LSH band keys and which rows have
    any; the components of shared buckets are judged by `judge` (the contenders' columns, `_seq`
    order), and rows in none are unique."""
    parts = partitions(contenders.count())
    buckets = _sorting(
        contenders.map_batches(partial(_bucket_rows, keys=keys, parts=parts), batch_format="pyarrow")
    )
    links = buckets.groupby("_part", num_partitions=parts).map_groups(_links, batch_format="numpy")
    labels = [ray.remote(num_cpus=1)(_components).remote(parts, *links.to_arrow_refs())]
    alone = _sorting(contenders.map_batches(partial(_alone, labels=labels), batch_format="pyarrow"))
    joined = _sorting(contenders.map_batches(partial(_joined, labels=labels), batch_format="pyarrow"))
    return alone.union(_grouped(joined, parts, judge))
