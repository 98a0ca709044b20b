"""Spec files for ``Client.submit`` and ``Client.create_study``: the data a YAML or JSON file holds,
read as mmkd's own reader reads it, so a file that ``mmkd train`` accepts is submitted as the same data.

This package does not import the server's code, so the rules are restated here. Strict JSON is
read as JSON (it may escape a character beyond U+FFFF as two halves, which YAML refuses); anything
else, a JSON text with a duplicate key or ``NaN`` included, is read as YAML, as JSON would hold it. A date
stays the text written; a plain number is one JSON could write (``1e-3`` is a number; ``+1``,
``.5`` and ``1.`` are too, as in YAML 1.2) and what else YAML 1.1 reads as a number (``010``,
``0x10``, ``1:30``, ``1_0``, ``.inf``) is refused; a tag for a type JSON has no word for
(``!!binary``, ``!!set``, ``!!timestamp``...), an alias, a duplicate or non-string key and nesting
deeper than 32 are refused. Every refusal is one ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

MAX_DEPTH = 32  # as on the server: a spec nests 3 deep
_TAG = "tag:yaml.org,2002:"
_JSON_TAGS = {f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map")}
_YAML11_NUMBER = "tag:mmkd:yaml-1.1-number"  # a number YAML 1.1 reads that JSON cannot write
_INTEGER = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")


class _Refused(Exception):
    """A rule of mmkd's spec reader broken; the message names where."""


def read_spec_file(path: str | Path, *, what: str = "job spec") -> dict[str, Any]:
    """The mapping a spec file holds, or one ValueError naming the file (``what`` it should hold)."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        data = _json_data(text)
    except (ValueError, RecursionError):  # not JSON, or JSON the YAML reader refuses with a line number
        data = _yaml_data(text, source)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a {what} must be a mapping, got {type(data).__name__}")
    return data


def _json_data(text: str) -> Any:
    """Strict JSON: a duplicate key, NaN, a float beyond what JSON can write, deep nesting are ValueErrors."""
    data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    pending = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not finite")
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise ValueError("too deep")
            pending.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key")
    return data


def _yaml_data(text: str, source: str) -> Any:
    try:
        import yaml  # optional: only needed for YAML spec files
    except ImportError as exc:
        raise ValueError(f"{source} is not JSON; install PyYAML to submit YAML specs") from exc
    loader = _loader_class(yaml)(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise ValueError(f"{source}: {exc}") from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"{source}: not a valid YAML spec: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def _loader_class(yaml: Any) -> Any:
    """A SafeLoader that builds only what JSON can hold, with mmkd's resolution of plain scalars."""

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            where = f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}"
            if isinstance(event, yaml.AliasEvent):
                raise _Refused(f"YAML alias at {where}: aliases are not allowed in a spec")
            if getattr(event, "tag", None) not in (None, "!", *_JSON_TAGS):
                raise _Refused(f"tag {event.tag} at {where} is not allowed: a spec holds what JSON can")
            nests = isinstance(event, yaml.CollectionStartEvent)
            self.depth += nests
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels at {where}")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= nests

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[str] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise _Refused(f"mapping key at line {line} must be a string, got {type(key).__name__}")
                if key in seen:
                    raise _Refused(f"duplicate key {key!r} at line {line}")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_float(self, node: Any) -> float:
            value: float = super().construct_yaml_float(node)
            if not math.isfinite(value):
                raise _Refused(f"{node.value!r} at line {node.start_mark.line + 1} is not a finite number")
            return value

        def construct_yaml11_number(self, node: Any) -> Any:
            raise _Refused(
                f"{node.value!r} at line {node.start_mark.line + 1} is a YAML 1.1 number JSON cannot write: "
                "write it as JSON does, or quote it for text"
            )

    Loader.add_constructor(f"{_TAG}float", Loader.construct_yaml_float)
    Loader.add_constructor(_YAML11_NUMBER, Loader.construct_yaml11_number)
    Loader.yaml_implicit_resolvers = {}
    for first in "-+0123456789.":
        Loader.yaml_implicit_resolvers[first] = [(f"{_TAG}int", _INTEGER), (f"{_TAG}float", _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
        for tag, regexp in resolvers:
            if tag in (f"{_TAG}int", f"{_TAG}float"):
                tag = _YAML11_NUMBER
            elif tag not in _JSON_TAGS:  # timestamp, merge (<<), value (=): the text written
                continue
            Loader.yaml_implicit_resolvers.setdefault(first, []).append((tag, regexp))
    return Loader
