"""What ``predict`` lets ``torch.export.load`` open: a ``student.pt2`` holding only plain tensors.

``torch.export.load`` unpickles with ``weights_only=False`` an entry flagged ``use_pickle``, a custom
or opaque object, a legacy ``.pt`` state dict and sample inputs that the safe unpickler refuses,
and it loads AOTInductor shared libraries. An archive of ours has none of these: its entries are
checked against the names ``export_student`` writes, its payload configs for ``use_pickle`` and its
sample inputs with the safe unpickler, all before torch sees the file.

This closes the pickle doors only. The program's graph names the functions it calls and torch
parses its shape expressions with sympy, so a model folder must still come from a trusted source.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from pathlib import Path

import torch

from core.errors import DataError

# Every entry torch.export.save writes for one program of plain tensors, below the archive's root folder.
_ENTRY = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/(weight_\d+|model_weights_config\.json)"
    r"|data/constants/(tensor_\d+|model_constants_config\.json)"
    r"|data/sample_inputs/model\.pt"
)
_PAYLOAD = re.compile(r"weight_\d+|tensor_\d+")
_CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
MAX_CONFIG_BYTES = 16 * 1024**2


def refuse_pickled_payloads(path: Path) -> None:
    """A DataError naming ``path`` unless every entry of the archive loads without running pickled code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if len(set(names)) != len(names) or len({name.split("/", 1)[0] for name in names}) != 1:
                raise DataError(str(path), "holds duplicate entries or more than one root folder")
            entries = {_below_root(name): name for name in names}
            unexpected = sorted(name for name in entries if not _ENTRY.fullmatch(name))
            if unexpected:
                raise DataError(str(path), f"holds {unexpected[0][:120]!r}, which predict does not load")
            for config in _CONFIGS:
                if config in entries:
                    _check_payload_config(path, config, _read(path, archive, entries[config]))
            if _SAMPLE_INPUTS in entries:
                _check_sample_inputs(path, _read(path, archive, entries[_SAMPLE_INPUTS]))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DataError(str(path), f"not a loadable torch.export program ({type(exc).__name__})") from exc


def _below_root(name: str) -> str:
    """An entry's name without the archive's root folder (torch names the root after the file)."""
    return name.split("/", 1)[1] if "/" in name else f"/{name}"  # a root-level entry never matches


def _read(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    if archive.getinfo(name).file_size > MAX_CONFIG_BYTES:
        raise DataError(str(path), f"entry {name[:120]!r} is over {MAX_CONFIG_BYTES} bytes")
    return archive.read(name)


def _check_payload_config(path: Path, config: str, payload: bytes) -> None:
    """Every tensor of a weights or constants config is raw bytes: no ``use_pickle``, no objects."""
    try:
        entries = json.loads(payload)["config"]
        pickled = [
            name
            for name, meta in entries.items()
            if meta.get("use_pickle") is not False or not _PAYLOAD.fullmatch(str(meta.get("path_name")))
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(str(path), f"{config} is not a payload config ({type(exc).__name__})") from exc
    if pickled:
        raise DataError(str(path), f"{config}: {pickled[0][:120]!r} is pickled; predict loads plain tensors only")


def _check_sample_inputs(path: Path, payload: bytes) -> None:
    """The sample inputs load with the safe unpickler (torch would retry a refusal with the unsafe one)."""
    try:
        with warnings.catch_warnings():  # a crafted pickle's protocol warning would be a second line
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:  # the safe unpickler refuses anything but tensors and containers
        raise DataError(str(path), f"{_SAMPLE_INPUTS} is not plain tensors ({type(exc).__name__})") from exc
