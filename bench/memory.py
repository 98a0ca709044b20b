"""Peak memory of a training process against the size of its dataset: one file read whole, or the
same data as a sharded folder streamed through the block cache (core.data.shards).

    python -m bench.memory [--allowed-mb 64] [--multiples 0.5,1,2,4] [--cache-mb 16] [--layouts npy,npz,file]

For each multiple m a synthetic dataset of m x ``--allowed-mb`` MB of float32 features (two
modalities, 4 classes with signal) is written once per layout: ``npy`` (one .npy per array, read by
positioned reads), ``npz`` (.npz shards of about ``--cache-mb``/4 MB each) and ``file`` (the single .npz
the service reads today). A fresh process (``--child``) trains student_only on it for one epoch and
reports its peak resident memory (VmHWM) and test accuracy. "Allowed" is the memory a sharded run may
spend on data beyond the process's fixed cost: the streamed rows stay flat across the multiples, the
single file's grow with them. The synthetic data is written a chunk at a time, so the writer stays small too.

Prints a markdown table; docs/performance.md records a run. tests/core/test_shards_memory.py runs a
small case of the same measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PRIMARY, AUXILIARY = 192, 64  # features of the two modalities: 1 KiB a row in float32
CHUNK_ROWS = 8192


def rows_for(megabytes: float) -> int:
    """Rows of ``megabytes`` MB of features."""
    return max(64, int(megabytes * 2**20 / ((PRIMARY + AUXILIARY) * 4)))


def write_dataset(folder: Path, rows: int, layout: str, *, shard_rows: int = 4096, seed: int = 0) -> str:
    """A synthetic 4-class dataset of ``rows`` rows in ``layout``; returns the spec's uri for it. The
    class shifts the first 8 features of each modality, so a student can learn it from the primary one."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    label = rng.integers(0, 4, size=rows)

    def chunk(start: int, stop: int, width: int) -> np.ndarray:
        values = rng.standard_normal((stop - start, width), dtype=np.float32)
        values[:, :8] += label[start:stop, None].astype(np.float32)
        return values

    if layout == "npy":
        for name, width in (("primary", PRIMARY), ("auxiliary", AUXILIARY)):
            out = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=(rows, width))
            for start in range(0, rows, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, rows)
                out[start:stop] = chunk(start, stop, width)
                out.flush()
            del out
        np.save(folder / "label.npy", label)
        return f"{folder}/"
    if layout == "npz":
        for number, start in enumerate(range(0, rows, shard_rows)):
            stop = min(start + shard_rows, rows)
            np.savez(
                folder / f"part-{number:05d}.npz",
                primary=chunk(start, stop, PRIMARY),
                auxiliary=chunk(start, stop, AUXILIARY),
                label=label[start:stop],
            )
        return f"{folder}/"
    primary = np.concatenate([chunk(s, min(s + CHUNK_ROWS, rows), PRIMARY) for s in range(0, rows, CHUNK_ROWS)])
    auxiliary = np.concatenate([chunk(s, min(s + CHUNK_ROWS, rows), AUXILIARY) for s in range(0, rows, CHUNK_ROWS)])
    np.savez(folder / "data.npz", primary=primary, auxiliary=auxiliary, label=label)
    return str(folder / "data.npz")


def spec(uri: str) -> dict[str, Any]:
    return {
        "name": "memory",
        "dataset": {"uri": uri, "primary": ["primary"], "auxiliary": ["auxiliary"]},
        "model": {"hidden_dim": 32, "repr_dim": 16},
        "method": {"name": "student_only"},
        "train": {"epochs": 1, "batch_size": 512, "lr": 0.01},
    }


def child(uri: str, cache_bytes: int, workdir: str) -> None:
    """Train one epoch on ``uri``; print the peak RSS (bytes) and the test accuracy as JSON."""
    import torch

    from core.data import prepare
    from core.engine.trainer import train
    from core.spec import JobSpec

    torch.set_num_threads(1)
    job = JobSpec.model_validate(spec(uri))
    data = prepare(job.dataset, job.task, cache_bytes=cache_bytes)
    summary = train(job, workdir=Path(workdir), data=data)
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss": peak, "accuracy": summary["student"]["accuracy"]}))


def measure(uri: str, cache_bytes: int, workdir: Path) -> dict[str, Any]:
    """Peak RSS and accuracy of a fresh process training on ``uri``."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", uri, str(workdir), "--cache-bytes", str(cache_bytes)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the training process failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allowed-mb", type=float, default=64.0)
    parser.add_argument("--multiples", default="0.5,1,2,4")
    parser.add_argument("--cache-mb", type=float, default=16.0)
    parser.add_argument("--layouts", default="npy,npz,file")
    parser.add_argument("--child", nargs=2, metavar=("URI", "WORKDIR"))
    parser.add_argument("--cache-bytes", type=int, default=16 << 20)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.cache_bytes, args.child[1])
        return
    cache = int(args.cache_mb * 2**20)
    multiples = [float(value) for value in args.multiples.split(",")]
    layouts = args.layouts.split(",")
    print(f"allowed {args.allowed_mb:g} MB, block cache {args.cache_mb:g} MB; peak RSS in MB (test accuracy)\n")
    print("| data (x allowed) | data MB | " + " | ".join(layouts) + " |")
    print("|---|---|" + "---|" * len(layouts))
    with tempfile.TemporaryDirectory(prefix="mmkd-memory-") as scratch:
        for multiple in multiples:
            rows = rows_for(multiple * args.allowed_mb)
            cells = []
            for layout in layouts:
                folder = Path(scratch) / f"{layout}-{multiple:g}"
                uri = write_dataset(folder, rows, layout, shard_rows=max(64, rows_for(args.cache_mb / 4)))
                result = measure(uri, cache, Path(scratch) / f"run-{layout}-{multiple:g}")
                cells.append(f"{result['peak_rss'] / 2**20:.0f} ({result['accuracy']:.3f})")
                for path in folder.iterdir():
                    path.unlink()
            data_mb = rows * (PRIMARY + AUXILIARY) * 4 / 2**20
            print(f"| {multiple:g} | {data_mb:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
