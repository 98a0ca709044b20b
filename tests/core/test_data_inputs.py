"""The ways an .npz can be wrong that issue 12 found or looked for: each is one DataError naming the
file and the array, raised while reading (before any training), the same for a local run, a job and
an upload (``summarise_npz``); a few odd but valid files still load."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.data import prepare
from core.data.arrays import read_npz
from core.data.summary import summarise_npz
from core.errors import DataError
from core.spec import DatasetSpec, TaskKind

Arrays = dict[str, np.ndarray]


def good(n: int = 60) -> Arrays:
    rng = np.random.default_rng(0)
    return {
        "a": rng.normal(size=(n, 5)).astype(np.float32),
        "b": rng.normal(size=(n, 2, 8)).astype(np.float32),
        "label": np.arange(n) % 3,
    }


def spec_for(path: Path, **extra: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"uri": str(path), "primary": ["a"], "auxiliary": ["b"], **extra})


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def refusal(path: Path, task: TaskKind = "classification", **extra: object) -> str:
    """The one-line refusal of ``prepare``, checked to start with the file's name."""
    with pytest.raises(DataError) as caught:
        prepare(spec_for(path, **extra), task)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def changed(**arrays: np.ndarray | None) -> Callable[[], Arrays]:
    def build() -> Arrays:
        result = {**good(), **arrays}
        return {name: value for name, value in result.items() if value is not None}

    return build


def split(train: int, val: int, test: int) -> np.ndarray:
    return np.array(["train"] * train + ["val"] * val + ["test"] * test)


#: (arrays, message): refused the same by ``prepare`` (a run, a job) and ``summarise_npz`` (an upload).
FILE_CASES = [
    (changed(label=np.array(3)), "array 'label' is 0-d; expected one value per sample"),
    (changed(a=np.zeros((60, 0), np.float32)), "modality 'a' has shape (60, 0); every sample needs at least one"),
    (changed(b=np.zeros((60, 2, 0), np.float32)), "modality 'b' has shape (60, 2, 0); every sample needs at least"),
    (changed(b=np.zeros((60, 0, 8), np.float32)), "modality 'b' has shape (60, 0, 8)"),
    (changed(label=np.zeros(60, np.int64)), "the labelled samples hold only class 0; classification needs at least 2"),
    (changed(label=np.where(np.arange(60) < 2, 1, -1)), "the labelled samples hold only class 1"),
    (changed(a=np.full((60, 5), 1e300)), "modality 'a' has values beyond float32's range (3.4e38) in 60 samples"),
    (changed(a=np.full((60, 5), -np.inf)), "modality 'a' has non-finite values in 60 samples"),
    (changed(a=np.zeros((60, 5), np.complex64)), "modality 'a' must be numeric, got dtype complex64"),
    (changed(label=np.full(60, 2**63, np.uint64)), "array 'label' has class id 9.22e+18; the limit is 10000 classes"),
    (changed(label=np.where(np.arange(60) == 5, 2_000_000_000, np.arange(60) % 3)), "class id 2000000000; the"),
    (changed(label=np.array(["x"] * 60)), "array 'label' must be numeric"),
    (changed(split=np.array([b"tr\xffin"] * 60)), "array 'split' must be (N,) with values in"),
    (changed(split=np.ones(60, np.int64)), "array 'split' must be (N,) with values in"),
    (changed(split=split(50, 0, 10).reshape(60, 1)), "array 'split' must be (N,) with values in"),
    (changed(split=split(0, 30, 30)), "array 'split' names no train sample"),
    (changed(split=np.array(["train", "test"] * 30), label=np.tile([0, 1], 30)), "labelled train samples hold only"),
    (changed(class_names=np.array("digits")), "array 'class_names' must be (K,) strings, got shape ()"),
    (changed(class_names=np.array([["a", "b"], ["c", "d"]])), "array 'class_names' must be (K,) strings"),
    (changed(class_names=np.array(["a", "b"])), "array 'class_names' has 2 names for 3 classes"),
    (changed(a=good()["a"][:0], b=good()["b"][:0], label=np.zeros(0, np.int64)), "only 0 samples"),
    (changed(a=good()["a"][:59]), "modalities have different sample counts"),
    (changed(label=np.arange(59) % 3), "array 'label' has 59 samples, the modalities have 60"),
]


#: Float labels: class ids for a run's classification; an upload reads them as regression targets,
#: out of float32's range.
FLOAT_CLASS_CASES = [
    (changed(label=np.where(np.arange(60) == 5, 1e300, np.arange(60) % 3)), "class id 1e+300; the limit is 10000"),
    (changed(label=np.where(np.arange(60) == 5, -1e300, np.arange(60) % 3)), "class ids below -1"),
]


@pytest.mark.parametrize(("build", "message"), FILE_CASES)
def test_a_bad_file_is_one_data_error_for_a_run_and_an_upload(
    tmp_path: Path, build: Callable[[], Arrays], message: str
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **build())
    assert message in refusal(path)
    with pytest.raises(DataError) as caught:
        summarise_npz("the uploaded file", path)
    assert str(caught.value).startswith("the uploaded file: ") and message in str(caught.value)


@pytest.mark.parametrize(("build", "message"), FLOAT_CLASS_CASES)
def test_float_class_ids_out_of_range(tmp_path: Path, build: Callable[[], Arrays], message: str) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **build())
    assert message in refusal(path)
    with pytest.raises(DataError, match="the uploaded file: array 'label' has infinite values or values beyond"):
        summarise_npz("the uploaded file", path)


def test_a_split_that_leaves_train_one_class_is_refused(tmp_path: Path) -> None:
    """Class 1 has two samples; val 45% and test 30% of it round to one each, so train has none."""
    arrays = good()
    arrays["label"] = np.where(np.arange(60) < 2, 1, 0)
    np.savez(tmp_path / "d.npz", **arrays)
    message = refusal(tmp_path / "d.npz", val_fraction=0.45, test_fraction=0.3)
    assert "array 'label': the labelled train samples (seeded stratified split (split_seed=0)) hold only class 0" in (
        message
    )
    assert 1 in prepare(spec_for(tmp_path / "d.npz"), "classification").train.label  # the default split keeps both


def test_labels_that_cannot_train_or_evaluate_other_tasks(tmp_path: Path) -> None:
    arrays = good()
    arrays["label"] = np.full(60, np.nan)
    np.savez(tmp_path / "nan.npz", **arrays)
    assert "array 'label' has no labelled sample" in refusal(tmp_path / "nan.npz", "regression")
    arrays["label"] = np.zeros((60, 0), np.float32)
    np.savez(tmp_path / "k0.npz", **arrays)
    assert "array 'label' has shape (60, 0); expected 1 to 10000 columns" in refusal(tmp_path / "k0.npz", "regression")
    arrays["label"] = np.where(np.arange(60) < 40, np.nan, 1.0)
    arrays["split"] = split(40, 10, 10)
    np.savez(tmp_path / "train_nan.npz", **arrays)
    assert "array 'label': no train sample has a label" in refusal(tmp_path / "train_nan.npz", "regression")
    multilabel = np.zeros((60, 3), np.float32)
    multilabel[:40, 0] = 1.0  # no positive label in val or test: mean average precision is undefined
    arrays["label"] = multilabel
    np.savez(tmp_path / "ml.npz", **arrays)
    assert "array 'label': the val samples have no positive label" in refusal(tmp_path / "ml.npz", "multilabel")


def test_odd_but_valid_files_still_load(tmp_path: Path) -> None:
    arrays = good()
    arrays["label"] = np.arange(60) % 2 == 0  # booleans are classes 0 and 1
    arrays["a"] = np.ones((60, 5), np.int8)
    arrays["split"] = np.array([b"train"] * 40 + [b"val"] * 10 + [b"test"] * 10)  # bytes, as some writers store them
    arrays["class_names"] = np.array([b"odd", b"even"])
    np.savez(tmp_path / "odd.npz", **arrays)
    data = prepare(spec_for(tmp_path / "odd.npz"), "classification")
    assert data.output_dim == 2 and data.class_names == ["odd", "even"] and len(data.val) == 10
    arrays = good()
    arrays["label"] = np.where(np.arange(60) >= 50, 0, np.arange(60) % 3)  # the test split holds class 0 only
    arrays["split"] = split(40, 10, 10)
    np.savez(tmp_path / "test_one_class.npz", **arrays)
    assert prepare(spec_for(tmp_path / "test_one_class.npz"), "classification").test.label.tolist() == [0] * 10


def stored_member(name: str, header: dict[str, object], data: bytes) -> bytes:
    """An .npz of one stored member whose .npy header says whatever the test wants."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}.npy", npy.getvalue() + data)
    return buffer.getvalue()


def with_central_sizes(payload: bytes, *, file_size: int) -> bytes:
    """The archive with every central-directory entry declaring ``file_size`` uncompressed bytes."""
    patched = bytearray(payload)
    start = 0
    while (start := patched.find(b"PK\x01\x02", start)) >= 0:
        patched[start + 24 : start + 28] = struct.pack("<I", file_size)
        start += 4
    return bytes(patched)


def test_a_header_that_promises_more_than_the_file_holds_allocates_nothing() -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**40, 5)}  # 44 TB of float64
    payload = stored_member("a", header, b"\0" * 400)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            read_npz("data.npz", payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000
    assert str(caught.value).startswith("data.npz: array 'a': its header declares shape (1099511627776, 5) of float64")
    negative = stored_member("a", {**header, "shape": (-4, 5)}, b"")
    with pytest.raises(DataError, match="data.npz: array 'a' has a negative dimension"):
        read_npz("data.npz", negative)


def test_a_zip_directory_that_lies_about_sizes_is_refused_before_decompressing() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **good())
    bomb = with_central_sizes(buffer.getvalue(), file_size=2**32 - 1)
    with pytest.raises(DataError, match=r"data.npz: array '\w+': the zip directory declares impossible sizes"):
        read_npz("data.npz", bomb)
    stored = with_central_sizes(npz(**good()), file_size=10**6)
    with pytest.raises(DataError, match="the zip directory declares impossible sizes"):
        read_npz("data.npz", stored)


def test_a_header_and_directory_that_agree_on_a_size_the_file_cannot_hold_allocate_nothing() -> None:
    """A crafted member: its .npy header and the zip directory both say 1 GiB; the file holds 64 bytes."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**27,)}
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    crafted = with_central_sizes(stored_member("a", header, b"\0" * 64), file_size=len(npy.getvalue()) + 2**30)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="data.npz: array 'a': the zip directory declares impossible sizes"):
            read_npz("data.npz", crafted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_only_stored_or_deflated_members_are_read(method: int) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("a.npy", npz_member(np.zeros((60, 5))))
    with pytest.raises(DataError, match=f"array 'a' is compressed with zip method {method}; only stored or deflated"):
        read_npz("data.npz", buffer.getvalue())


def npz_member(array: np.ndarray) -> bytes:
    member = io.BytesIO()
    np.save(member, array)
    return member.getvalue()


def test_two_members_of_one_name_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("label.npy", npz_member(np.arange(60) % 3))
        archive.writestr("label.npy", npz_member(np.zeros(60)))
    with pytest.raises(DataError, match=r"data.npz: holds more than one member named \['label.npy'\]"):
        read_npz("data.npz", buffer.getvalue())


@pytest.mark.parametrize("compressed", [False, True])
def test_a_truncated_file_is_one_line_at_every_offset(compressed: bool) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **good(20))
    payload = buffer.getvalue()
    messages = set()
    for end in range(0, len(payload), 7):
        with pytest.raises(DataError) as caught:
            read_npz("data.npz", payload[:end])
        assert str(caught.value).startswith("data.npz: not a valid .npz file (") and "\n" not in str(caught.value)
        messages.add(str(caught.value))
    assert messages


def test_huge_finite_values_give_finite_statistics(tmp_path: Path) -> None:
    """Values near 2**64 (uint64 ids, say) square beyond float32; the statistics that travel with the
    student stay finite and the standardised data stays bounded."""
    arrays = good()
    arrays["a"] = np.random.default_rng(1).integers(0, 2**64 - 1, size=(60, 5), dtype=np.uint64)
    np.savez(tmp_path / "d.npz", **arrays)
    data = prepare(spec_for(tmp_path / "d.npz"), "classification")
    assert np.isfinite(data.normaliser.std["a"]).all() and (data.normaliser.std["a"] > 1e18).all()
    assert np.abs(data.train.modalities["a"]).max() < 10
