"""Data loading for mmkd: the generic .npz format and the built-in datasets (torch-free)."""

from core.data.prepare import Part, PreparedData, is_labelled, prepare

__all__ = ["Part", "PreparedData", "is_labelled", "prepare"]
