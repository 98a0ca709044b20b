"""Training on a sharded dataset runs in flat memory: a fresh process on 4x the data (128 MB of features
against 32 MB) may grow its peak RSS by at most a quarter of the added data (24 MB, a fifth of the large
dataset), where reading the file whole grows it by the whole difference. The measurement is
bench.memory's (docs/performance.md records its full run)."""

from __future__ import annotations

from pathlib import Path

from bench.memory import measure, rows_for, write_dataset

CACHE = 8 << 20


def test_streamed_training_memory_is_flat_in_the_dataset_size(tmp_path: Path) -> None:
    small = measure(write_dataset(tmp_path / "small", rows_for(32), "npy"), CACHE, tmp_path / "run-small")
    large = measure(write_dataset(tmp_path / "large", rows_for(128), "npy"), CACHE, tmp_path / "run-large")
    growth = large["peak_rss"] - small["peak_rss"]
    assert growth < 0.25 * 96 * 2**20, f"peak RSS grew {growth / 2**20:.1f} MB for 96 MB more data"
    assert large["accuracy"] > 0.6  # it learned from the streamed rows (4 classes: chance is 0.25)
