"""Fuzzing the .npz loader (issue 12, item 2): Hypothesis writes small valid datasets for every task,
breaks them (arrays dropped, added, reshaped, retyped, cut short, filled with NaN or absurd labels;
the file's bytes truncated, flipped or overwritten) and reads them the three ways mmkd does: ``prepare``
(a run or a job), ``summarise_npz`` (an upload) and, as the one shard of a folder,
``summarise_shards`` (an upload of shards: ranged reads of the zip directory, headers and annotations).

The property: a valid prepared dataset, or one ``DataError`` line that starts with the file's name;
never another exception, never an executed pickle, never more than ``MEMORY_BOUND`` bytes allocated.
``make fuzz`` (``MMKD_FUZZ=long``) runs the same test with a long budget.
"""

from __future__ import annotations

import io
import re
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests_support import fuzz_budget

from core.data import PreparedData, is_labelled, prepare
from core.data.shards import LocalOrS3Folders
from core.data.summary import summarise_npz, summarise_shards
from core.errors import DataError
from core.spec import DatasetSpec, TaskKind

SOURCE = "fuzz.npz"
MEMORY_BOUND = 64 * 2**20  # a generated file is at most a few tens of kB
EXECUTED: list[str] = []  # what a pickle in a fuzzed file managed to run (must stay empty)


def _mark_executed() -> None:
    EXECUTED.append("pickle")


class Payload:
    """An object whose unpickling would call ``_mark_executed``: an object array of these must be refused."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _mark_executed, ()


@st.composite
def datasets(draw: st.DrawFn) -> tuple[TaskKind, dict[str, np.ndarray], dict[str, Any]]:
    """A valid small dataset: the task, its arrays, and the spec's dataset section."""
    task: TaskKind = draw(st.sampled_from(["classification", "regression", "multilabel", "retrieval"]))
    n = draw(st.integers(10, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays: dict[str, np.ndarray] = {}
    for index in range(3 if task == "retrieval" else draw(st.integers(2, 3))):
        vector = draw(st.booleans())
        shape = (n, draw(st.integers(1, 6))) if vector else (n, draw(st.integers(1, 3)), draw(st.integers(1, 6)))
        dtype = draw(st.sampled_from(["float32", "float64", "float16", "int16", "uint8", "bool"]))
        arrays[f"m{index}"] = (rng.normal(size=shape) * 3).astype(dtype)
    names = list(arrays)
    dataset: dict[str, Any] = {"uri": SOURCE, "primary": names[:1], "auxiliary": names[1:2]}
    if task == "retrieval":
        dataset["retrieval_target"] = names[2]
    elif task == "classification":
        classes = draw(st.integers(2, 4))
        arrays["label"] = rng.permutation(np.arange(n) % classes)
        if draw(st.booleans()):
            arrays["class_names"] = np.array([f"class {index}" for index in range(classes)])
    elif task == "regression":
        arrays["label"] = rng.normal(size=n).astype(np.float32)
    else:
        arrays["label"] = (rng.random((n, 3)) < draw(st.sampled_from([0.5, 0.05]))).astype(np.float32)
    if draw(st.booleans()):
        arrays["split"] = rng.permutation(np.array(["train"] * (n - 2 * (n // 5)) + ["val", "test"] * (n // 5)))
    return task, arrays, dataset


def _array_mutation(draw: st.DrawFn, arrays: dict[str, np.ndarray]) -> None:
    """Break one array (or add one) in place."""
    reserved = st.sampled_from(["label", "label", "split", "class_names"])
    name = draw(st.one_of(reserved, st.sampled_from([*arrays, "extra"])))
    current = arrays.get(name, np.zeros((*next(iter(arrays.values())).shape[:1], 2), np.float32))
    kind = draw(
        st.sampled_from(
            ["drop", "zero_d", "empty_dim", "wrong_n", "reshape", "dtype", "objects", "values", "single_class"]
        )
    )
    if kind == "drop":
        arrays.pop(name, None)
        return
    numeric = current if current.dtype.kind in "biuf" else np.zeros(current.shape)
    with np.errstate(all="ignore"):
        if kind == "zero_d":
            arrays[name] = np.array(current.flat[0] if current.size else 0)
        elif kind == "empty_dim":
            arrays[name] = np.zeros((*current.shape[:1], *draw(st.sampled_from([(0,), (2, 0), (0, 3)]))))
        elif kind == "wrong_n":
            arrays[name] = current[: draw(st.integers(0, max(len(current) - 1, 0)))] if current.ndim else current
        elif kind == "reshape":
            arrays[name] = current.reshape(draw(st.sampled_from([(-1,), (1, -1), (-1, 1, 1, 1)])))
        elif kind == "dtype":
            dtype = draw(st.sampled_from(["U3", "S2", "complex64", "int64", "uint64", "float16", "datetime64[s]"]))
            arrays[name] = numeric.astype(np.int64 if dtype.startswith("datetime") else dtype).astype(dtype)
        elif kind == "objects":
            arrays[name] = np.array([Payload()] * max(len(current) if current.ndim else 1, 1), dtype=object)
        elif kind == "values" and current.size:
            arrays[name] = _with_value(draw, current if current.dtype.kind in "US" else numeric.astype(np.float64))
        elif kind == "single_class":
            arrays[name] = np.zeros(len(current) if current.ndim else 1, np.int64)


def _with_value(draw: st.DrawFn, array: np.ndarray) -> np.ndarray:
    """``array`` with one element replaced: an absurd number, or arbitrary text in a string array."""
    broken = array.astype("U8") if array.dtype.kind in "US" else array.copy()
    numbers = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 2e9, 2.0**63, -5, 0.5, -1])
    broken.flat[draw(st.integers(0, broken.size - 1))] = draw(
        st.text(max_size=8) if broken.dtype.kind == "U" else numbers
    )
    return broken


def _byte_mutation(draw: st.DrawFn, payload: bytes) -> bytes:
    """Break the file's bytes: cut, flip, overwrite or insert at an arbitrary offset."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert"]))
    if not payload:
        return payload
    offset = draw(st.integers(0, max(len(payload) - 1, 0)))
    if kind == "truncate":
        return payload[:offset]
    if kind == "flip":
        return payload[:offset] + bytes([payload[offset] ^ draw(st.integers(1, 255))]) + payload[offset + 1 :]
    chunk = draw(st.binary(min_size=1, max_size=16))
    tail = offset + len(chunk) if kind == "overwrite" else offset
    return payload[:offset] + chunk + payload[tail:]


def _huge_shape(draw: st.DrawFn, payload: bytes) -> bytes:
    """The archive rebuilt (valid CRCs and sizes, as a crafted file has) with one member's .npy
    header promising a huge first dimension; the header keeps its length, so only the size lies."""
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        members = {info: archive.read(info) for info in archive.infolist()}
    target = draw(st.sampled_from(sorted(members, key=lambda info: info.filename)))
    header = re.search(rb"'shape': \((\d+)([^\n]*?)( *)\n", members[target])
    digits = str(draw(st.integers(10**6, 10**15))).encode()
    if header is None or len(digits) - len(header[1]) > len(header[3]):
        return payload  # a 0-d array, or no room in the header's padding
    padding = b" " * (len(header[3]) - len(digits) + len(header[1]))
    npy = members[target]
    members[target] = npy[: header.start()] + b"'shape': (" + digits + header[2] + padding + b"\n" + npy[header.end() :]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as rebuilt:
        for info, data in members.items():
            rebuilt.writestr(info, data)
    return buffer.getvalue()


@st.composite
def broken_files(draw: st.DrawFn, *, in_bytes: bool) -> tuple[TaskKind, bytes, dict[str, Any]]:
    """A generated dataset as .npz bytes with broken arrays, and, ``in_bytes``, broken bytes too."""
    task, arrays, dataset = draw(datasets())
    for _ in range(draw(st.sampled_from([0, 1, 1, 2] if not in_bytes else [0, 0, 1]))):
        _array_mutation(draw, arrays)
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    payload = buffer.getvalue()
    if in_bytes and draw(st.integers(0, 2)) == 0:
        payload = _huge_shape(draw, payload)
    for _ in range(draw(st.integers(1, 2)) if in_bytes else 0):
        payload = _byte_mutation(draw, payload)
    return task, payload, dataset


def _check_prepared(data: PreparedData, task: TaskKind) -> None:
    """What a prepared dataset promises the trainer."""
    for statistics in (data.normaliser.mean, data.normaliser.std):  # they travel in model.json
        assert all(np.isfinite(values).all() for values in statistics.values())
    for part in (data.train, data.val, data.test):
        assert len(part) > 0
        for name, values in part.modalities.items():
            assert values.dtype == np.float32 and np.isfinite(values).all()
            assert values.shape == (len(part), *data.shapes[name]) and 0 not in values.shape
    if task == "classification":
        labelled = data.train.label[is_labelled(data.train.label)]
        assert len(np.unique(labelled)) >= 2 and labelled.max() < data.output_dim
    if task == "multilabel":  # mean average precision needs a positive label in each
        assert (data.val.label == 1).any() and (data.test.label == 1).any()
    if task != "retrieval":
        assert is_labelled(data.val.label).all() and is_labelled(data.test.label).all()


def _refusal_or_valid(read: Callable[[], object], *sources: str) -> object | None:
    """Run ``read`` under tracemalloc: its result, or None for a one-line DataError naming one of ``sources``."""
    tracemalloc.start()
    try:
        return read()
    except DataError as refused:
        message = str(refused)
        assert message.startswith(tuple(f"{source}: " for source in sources)) and "\n" not in message, message
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, f"{peak} bytes allocated"


def _read_both_ways(task: TaskKind, payload: bytes, dataset: dict[str, Any]) -> None:
    """The property, for a run or a job (``prepare``) and for an upload (``summarise_npz``)."""
    spec = DatasetSpec.model_validate(dataset)

    def read(ref: str, *, max_bytes: int | None) -> bytes:
        return payload

    prepared = _refusal_or_valid(lambda: prepare(spec, task, read=read), SOURCE)
    event(f"{task}: {'prepared' if prepared else 'refused'}")  # --hypothesis-show-statistics
    if isinstance(prepared, PreparedData):
        _check_prepared(prepared, task)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.npz"
        path.write_bytes(payload)
        _refusal_or_valid(lambda: summarise_npz("the uploaded file", path), "the uploaded file")
        folder_uri = f"{folder}/"
        _refusal_or_valid(lambda: summarise_shards(folder_uri, LocalOrS3Folders()), folder_uri, f"{folder}/upload.npz")
    assert EXECUTED == []


FUZZ = settings(
    max_examples=fuzz_budget(150, 10_000),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.fuzz
@FUZZ
@given(broken_files(in_bytes=False))
def test_broken_arrays_are_a_data_error_or_a_valid_dataset(case: tuple[TaskKind, bytes, dict[str, Any]]) -> None:
    _read_both_ways(*case)


@pytest.mark.fuzz
@FUZZ
@given(broken_files(in_bytes=True))
def test_broken_bytes_are_a_data_error_or_a_valid_dataset(case: tuple[TaskKind, bytes, dict[str, Any]]) -> None:
    _read_both_ways(*case)
