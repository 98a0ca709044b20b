"""The spec file reader: bytes on disk to one plain mapping, or a one-line :class:`SpecError`.

``yaml.safe_load`` never runs code, but it lets through what makes a spec mean something other than
what its author sees, or cost more than it looks: a duplicate key (the last one silently wins), an
alias (a billion-laughs document expands without bound), a tag for a type JSON cannot hold
(``!!binary``, ``!!timestamp``, ``!!set``, ``!!python/...``), a second document. This reader takes
PyYAML's event stream and builds the data itself, without recursion, refusing each of those with
its line and column. What it returns is what JSON can say: mappings with string keys, lists,
strings, numbers, booleans and null, so a spec means the same in a file and in an API request.

A plain number is written as JSON writes one (so ``1e-3`` is a number, as in JSON and YAML 1.2);
a leading ``+`` and a float with no digit before or after its dot (``+1``, ``.5``, ``-.5``, ``1.``)
are numbers too, as in YAML 1.2, since they mean the same to every reader. What else YAML 1.1 reads
as a number (``010`` is 8, ``0x10``, ``0b11``, ``1:30`` is 90, ``1_0``) is refused with its line:
the author writes the number JSON's way, or quotes the text.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode

from core.errors import SpecError, one_line

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: a real spec is under 2 KiB; the cap bounds parse time and memory
MAX_DEPTH = 32  # a spec nests 3 deep; the cap keeps a "[[[[..." file cheap to refuse

_Loader: type[yaml.CSafeLoader] | type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str")}
# YAML 1.1 types a plain scalar may resolve to that JSON has no word for: they stay the text written.
_TEXT_TAGS = {f"{_TAG}{name}" for name in ("timestamp", "merge", "value")}
# A plain number as JSON writes it, plus a leading + and a bare dot (.5, 1.) as YAML 1.2 does.
_NUMBER = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INTEGER = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_NUMBER_TAGS = {f"{_TAG}int", f"{_TAG}float"}
# JSON writes a character beyond U+FFFF as two escaped UTF-16 halves ("\ud83d\ude00"), which YAML
# refuses; in a JSON text (and only there: elsewhere a backslash may be literal) they become one escape.
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)
# The characters YAML forbids (the same set as PyYAML's reader), found here to name their line.
_NOT_YAML = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NO_DOCUMENT = object()  # the stream held no document (only comments)
_ALLOWED = "a spec holds only strings, numbers, booleans, null, lists and mappings"
_TYPE_WORDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number"}


def read_spec_file(path: str | Path) -> str:
    """The text of a spec file: a regular file of at most ``MAX_SPEC_BYTES`` bytes of UTF-8."""
    source = str(path)
    try:
        # O_NONBLOCK: a FIFO given by mistake is refused below instead of waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(descriptor).st_mode
            if stat.S_ISDIR(mode):
                raise SpecError(source, "is a directory, not a spec file")
            if not stat.S_ISREG(mode):
                raise SpecError(source, "is not a regular file")
            with os.fdopen(descriptor, "rb", closefd=False) as file:
                data = file.read(MAX_SPEC_BYTES + 1)
        finally:
            os.close(descriptor)
    except ValueError:  # os.open refuses a path with a NUL character in it
        raise SpecError(source.replace("\0", "\\0"), "is not a valid path: it contains a NUL character") from None
    except FileNotFoundError:
        raise SpecError(source, "no such file") from None
    except IsADirectoryError:
        raise SpecError(source, "is a directory, not a spec file") from None
    except PermissionError:
        raise SpecError(source, "cannot be read: permission denied") from None
    except OSError as exc:
        raise SpecError(source, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    return decode_spec(data, source)


def decode_spec(data: bytes, source: str) -> str:
    """UTF-8 text (a byte-order mark is dropped), or a SpecError naming the first bad byte."""
    _check_size(len(data), source)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(source, f"is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}") from None


def parse_spec_mapping(text: str, source: str) -> dict[str, Any]:
    """The one YAML (or JSON) document in ``text`` as plain data; it must be a mapping."""
    _check_size(len(text.encode("utf-8", "surrogatepass")), source)
    if not text.strip():
        raise SpecError(source, "is empty")
    bad = _NOT_YAML.search(text)
    if bad:
        where = _line_column(text, bad.start())
        raise SpecError(source, f"character U+{ord(bad.group()):04X} at {where} is not allowed in YAML")
    if _SURROGATE_PAIR.search(text) and _is_json(text):
        text = _SURROGATE_PAIR.sub(_one_escape, text)
    loader = _Loader(text)
    try:
        data = _build(loader, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(source, one_line(f"YAML syntax error{where}: {what}")) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, one_line(f"YAML error: {exc}")) from None
    finally:
        loader.dispose()
    if data is _NO_DOCUMENT:
        raise SpecError(source, "is empty (comments only)")
    if not isinstance(data, dict):
        raise SpecError(source, f"a job spec must be a mapping, got {_type_word(data)}")
    return data


class _Mapping:
    """A mapping being built: its keys' lines (for duplicate reports) and the key awaiting a value."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.key_lines: dict[str, int] = {}
        self.key: str | None = None


def _build(loader: yaml.SafeLoader | yaml.CSafeLoader, source: str) -> Any:
    """Fold the event stream into plain data with an explicit stack (no recursion, no aliases)."""
    stack: list[_Mapping | list[Any]] = []
    root: Any = _NO_DOCUMENT
    while loader.check_event():
        event: Any = loader.get_event()
        line = event.start_mark.line + 1
        where = f"line {line}, column {event.start_mark.column + 1}"
        if isinstance(event, DocumentStartEvent) and root is not _NO_DOCUMENT:
            raise SpecError(source, f"holds a second YAML document at {where}; a spec is one document")
        if isinstance(event, AliasEvent):
            raise SpecError(
                source,
                f"YAML alias *{_show(str(event.anchor), quote=False)} at {where}: aliases are not allowed in a spec",
            )
        if isinstance(event, MappingStartEvent | SequenceStartEvent):
            _check_collection_tag(event, source, where)
            if len(stack) >= MAX_DEPTH:
                raise SpecError(source, f"nests deeper than {MAX_DEPTH} levels at {where}")
            stack.append(_Mapping() if isinstance(event, MappingStartEvent) else [])
            continue
        if isinstance(event, ScalarEvent):
            value = _scalar(loader, event, source, where)
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            done = stack.pop()
            value = done.data if isinstance(done, _Mapping) else done
        else:  # stream and document boundaries
            continue
        if not stack:
            root = value
        else:
            _add(stack[-1], value, source, line=line, where=where)
    return root


def _add(parent: _Mapping | list[Any], value: Any, source: str, *, line: int, where: str) -> None:
    """Append to a list, or take a mapping's key, or its value for the key taken before."""
    if isinstance(parent, list):
        parent.append(value)
    elif parent.key is not None:
        parent.data[parent.key] = value
        parent.key = None
    elif not isinstance(value, str):
        raise SpecError(source, f"mapping key at {where} must be a string, got {_type_word(value)}")
    elif value in parent.key_lines:
        first = parent.key_lines[value]
        raise SpecError(source, f"duplicate key {_show(value)} at {where} (first at line {first})")
    else:
        parent.key = value
        parent.key_lines[value] = line


def _scalar(loader: yaml.SafeLoader | yaml.CSafeLoader, event: Any, source: str, where: str) -> Any:
    """A scalar's JSON value; an explicit tag must name a JSON type (``!!str``, ``!!int``...)."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = _implicit_tag(loader, event, source, where)
        if tag in _TEXT_TAGS:
            return event.value
    if tag not in _SCALAR_TAGS:
        raise SpecError(source, f"tag {_short_tag(tag)} at {where} is not allowed: {_ALLOWED}")
    node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        value = loader.construct_object(node)
    except (ValueError, KeyError, IndexError, TypeError, yaml.YAMLError):  # !!int "x", !!float "", !!bool "maybe"...
        raise SpecError(source, f"{_show(event.value)} at {where} is not a valid {_short_tag(tag)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(source, f"{_show(event.value)} at {where} is not a finite number (JSON has no .inf or .nan)")
    return value


def _implicit_tag(loader: yaml.SafeLoader | yaml.CSafeLoader, event: Any, source: str, where: str) -> str:
    """An untagged scalar's tag: YAML 1.1's, except that a plain number must be one JSON could write."""
    text = event.value
    tag: str = loader.resolve(ScalarNode, text, event.implicit)
    if not event.implicit[0] or tag in _TEXT_TAGS:  # quoted, or a date: text
        return tag
    if _NUMBER.fullmatch(text):
        return f"{_TAG}int" if _INTEGER.fullmatch(text) else f"{_TAG}float"
    if tag not in _NUMBER_TAGS:
        return tag
    try:
        value = loader.construct_object(ScalarNode(tag, text, event.start_mark, event.end_mark))
    except (ValueError, yaml.YAMLError):  # 0x_ and the like
        value = None
    if isinstance(value, float) and not math.isfinite(value):
        return tag  # .inf and .nan: refused as not finite, with the reason
    write = f"write {value!r}, or {_show(text)} for text" if value is not None else f"quote it: {_show(text)}"
    raise SpecError(source, f"{_show(text)} at {where} is a YAML 1.1 number JSON cannot write: {write}")


def _check_collection_tag(event: Any, source: str, where: str) -> None:
    expected = f"{_TAG}map" if isinstance(event, MappingStartEvent) else f"{_TAG}seq"
    if event.tag not in (None, "!", expected):
        raise SpecError(source, f"tag {_short_tag(event.tag)} at {where} is not allowed: {_ALLOWED}")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _one_escape(match: re.Match[str]) -> str:
    high, low = int(match.group(2), 16), int(match.group(3), 16)
    return f"{match.group(1)}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"


def _check_size(size: int, source: str) -> None:
    if size > MAX_SPEC_BYTES:
        raise SpecError(source, f"is larger than {MAX_SPEC_BYTES >> 20} MiB; a job spec is a few lines")


def _line_column(text: str, index: int) -> str:
    line_start = text.rfind("\n", 0, index) + 1
    return f"line {text.count(chr(10), 0, index) + 1}, column {index - line_start + 1}"


def _short_tag(tag: str) -> str:
    return _show("!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag, quote=False)


def _show(text: str, *, quote: bool = True, limit: int = 60) -> str:
    """User text in a message: escaped onto one line and cut short."""
    shown = repr(text) if quote else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _type_word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_WORDS.get(type(value), type(value).__name__)
