"""Training and predict check a modality's values with one helper (core.data.checks.checked_modality):
the same bad values read the same whether a dataset or a student's input holds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.data.checks import check_arrays
from core.engine.export import ModelCard, read_primary
from core.errors import DataError

GOOD = np.zeros((12, 3), np.float32)
BAD = {
    "not numeric": np.full((12, 3), "a"),
    "NaN": np.where(np.eye(12, 3) == 1, np.nan, 0.0),
    "beyond float32": np.full((12, 3), 1e39),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_modality_reads_the_same_in_training_and_in_predict(case: str, tmp_path: Path) -> None:
    label = np.arange(12) % 2
    with pytest.raises(DataError) as training:
        check_arrays("f.npz", {"a": BAD[case], "label": label}, modalities=["a"], task="classification", max_classes=9)
    path = tmp_path / "f.npz"
    np.savez(path, a=BAD[case])
    card = ModelCard(task="classification", modalities={"a": [3]})
    with pytest.raises(DataError) as predict:
        read_primary(path, card, max_bytes=None)
    assert str(training.value).split(": ", 1)[1] == str(predict.value).split(": ", 1)[1]


def test_a_good_modality_is_float32_in_both() -> None:
    checked = check_arrays("f.npz", {"a": GOOD}, modalities=["a"], task="retrieval", max_classes=9)
    assert checked.modalities["a"].dtype == np.float32
