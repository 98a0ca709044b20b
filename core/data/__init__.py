"""Data loading for mmkd: the generic .npz format and the built-in datasets (torch-free)."""

from core.data.arrays import MAX_CLASSES
from core.data.prepare import Part, PreparedData, is_labelled, prepare

__all__ = ["MAX_CLASSES", "Part", "PreparedData", "is_labelled", "prepare"]
