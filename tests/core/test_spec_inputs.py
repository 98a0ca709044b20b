"""Every way a spec file can be wrong: ``load_spec`` and ``parse_spec_text`` raise one one-line
SpecError naming the file, and nothing else; strict types; hashes of valid specs unchanged; the
cross-field rules in the JSON schema."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi

from core.errors import SpecError
from core.spec import METHOD_NAMES, JobSpec, load_spec, parse_spec_text
from core.spec_yaml import MAX_SPEC_BYTES, parse_spec_mapping

ROOT = Path(__file__).resolve().parents[2]
GOOD = "name: t\ndataset: {name: mfeat, primary: [fou], auxiliary: [fac]}\nmethod: {name: paper}\n"
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def spec_error(path: Path, content: str | bytes) -> str:
    """Write ``content`` to ``path``, load it, and return the SpecError's message (checked to be one line)."""
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1, message
    assert len(message.splitlines()) == 1, message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("  \n\n", "is empty"),
        ("# only a comment\n", "is empty (comments only)"),
        (b"name: caf\xe9\n", "is not UTF-8 text: byte 0xe9 on line 1"),
        ("name: t\ndataset: {name: mfeat\n  x: [\n", "YAML syntax error at line 3, column 4: "),
        ("name: t\n\tmethod: 1\n", "YAML syntax error at line 2, column 1: "),
        ("a: \x00\n", "character U+0000 at line 1, column 4 is not allowed in YAML"),
        ("- a\n- b\n", "a job spec must be a mapping, got a list"),
        ("just text\n", "a job spec must be a mapping, got a string"),
        ("---\n", "a job spec must be a mapping, got null"),
        (GOOD + "---\n" + GOOD, "holds a second YAML document at line 4, column 1; a spec is one document"),
        (GOOD + "name: u\n", "duplicate key 'name' at line 4, column 1 (first at line 1)"),
        (GOOD + "train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n", "duplicate key 'epochs' at line 7, column 3"),
        (GOOD + "train: {seed: 1, seed: 1}\n", "duplicate key 'seed' at line 4, column 18"),
        (GOOD + "1: one\n", "mapping key at line 4, column 1 must be a string, got an integer"),
        (GOOD + "? [a]\n: 1\n", "must be a string, got a list"),
        (GOOD + "x: !!binary aGk=\n", "tag !!binary at line 4, column 4 is not allowed: a spec holds only"),
        (GOOD + "x: !!timestamp 2024-01-01\n", "tag !!timestamp at line 4, column 4 is not allowed"),
        (GOOD + "x: !!set {a: null}\n", "tag !!set at line 4, column 4 is not allowed"),
        (GOOD + "x: !include other.yaml\n", "tag !include at line 4, column 4 is not allowed"),
        (GOOD + "train: {amp: !!bool maybe}\n", "'maybe' at line 4, column 14 is not a valid !!bool"),
        (GOOD + "train: {epochs: !!int ''}\n", "'' at line 4, column 17 is not a valid !!int"),
        (GOOD + "train:\n  lr: !!float\n", "'' at line 5, column 7 is not a valid !!float"),
        (GOOD + "train: {lr: !!float '-'}\n", "'-' at line 4, column 13 is not a valid !!float"),
        (GOOD + "train: {epochs: " + "9" * 5000 + "}\n", "at line 4, column 17 is not a valid !!int"),
        (GOOD + "train: {weight_decay: .inf}\n", "'.inf' at line 4, column 23 is not a finite number"),
        (GOOD + "train: {lr: .nan}\n", "'.nan' at line 4, column 13 is not a finite number"),
        (GOOD + "train: {lr: 1e999}\n", "'1e999' at line 4, column 13 is not a finite number"),
        (
            GOOD + "train: {epochs: 010}\n",
            "'010' at line 4, column 17 is a YAML 1.1 number JSON cannot write: write 8, or '010' for text",
        ),
        (
            GOOD + "train: {epochs: 0x10}\n",
            "'0x10' at line 4, column 17 is a YAML 1.1 number JSON cannot write: write 16, or '0x10' for text",
        ),
        (
            GOOD + "train: {epochs: 0b11}\n",
            "'0b11' at line 4, column 17 is a YAML 1.1 number JSON cannot write: write 3, or '0b11' for text",
        ),
        (
            GOOD + "train: {epochs: 1:30}\n",
            "'1:30' at line 4, column 17 is a YAML 1.1 number JSON cannot write: write 90, or '1:30' for text",
        ),
        (
            GOOD + "train: {epochs: 1_0}\n",
            "'1_0' at line 4, column 17 is a YAML 1.1 number JSON cannot write: write 10, or '1_0' for text",
        ),
        (
            GOOD + "train: {lr: 1_0.5}\n",
            "'1_0.5' at line 4, column 13 is a YAML 1.1 number JSON cannot write: write 10.5, or '1_0.5' for text",
        ),
        (GOOD + "train: {lr: 00.5}\n", "'00.5' at line 4, column 13 is a YAML 1.1 number JSON cannot write: write 0.5"),
        (
            GOOD + "train: {lr: 1:30.5}\n",
            "'1:30.5' at line 4, column 13 is a YAML 1.1 number JSON cannot write: write 90.5, or '1:30.5' for text",
        ),
        (
            GOOD + "train: {epochs: 0x_}\n",
            "'0x_' at line 4, column 17 is a YAML 1.1 number JSON cannot write: quote it: '0x_'",
        ),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "nests deeper than 32 levels at line 1, column 35"),
        (BILLION_LAUGHS, "YAML alias *a at line 2, column 8: aliases are not allowed in a spec"),
        (GOOD + "train: &t {epochs: 2}\ncheckpoint: *t\n", "YAML alias *t at line 5, column 13"),
        (GOOD + "<<: {name: u}\n", "invalid spec: '<<': Extra inputs are not permitted"),
        (GOOD + "train: {epochs: true}\n", "invalid spec: train.epochs: Input should be a valid integer"),
    ],
)
def test_a_broken_file_is_one_line_naming_it(tmp_path: Path, content: str | bytes, expected: str) -> None:
    assert expected in spec_error(tmp_path / "spec.yaml", content)


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    content = GOOD + f"train: {{seed: !!python/object/apply:os.system ['touch {marker}']}}\n"
    message = spec_error(tmp_path / "spec.yaml", content)
    assert message.startswith("tag !!python/object/apply:os.system at line 4, column 15 is not allowed")
    assert not marker.exists()


def test_a_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    started = time.perf_counter()
    spec_error(tmp_path / "spec.yaml", BILLION_LAUGHS)
    assert time.perf_counter() - started < 1.0


def test_the_size_cap_is_one_mebibyte(tmp_path: Path) -> None:
    padding = "#" * 1023 + "\n"
    at_cap = GOOD + padding * ((MAX_SPEC_BYTES - len(GOOD)) // 1024)
    at_cap += "#" * (MAX_SPEC_BYTES - len(at_cap) - 1) + "\n"
    (tmp_path / "big.yaml").write_text(at_cap)
    assert len(at_cap) == MAX_SPEC_BYTES and load_spec(tmp_path / "big.yaml").name == "t"
    assert spec_error(tmp_path / "spec.yaml", at_cap + "\n") == "is larger than 1 MiB; a job spec is a few lines"
    with pytest.raises(SpecError, match="^<text>: is larger than 1 MiB"):
        parse_spec_text(at_cap + "\n", "<text>")


def test_files_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {tmp_path / "missing.yaml": "no such file", tmp_path: "is a directory, not a spec file"}
    os.mkfifo(tmp_path / "pipe.yaml")  # refused without waiting for a writer
    cases[tmp_path / "pipe.yaml"] = "is not a regular file"
    cases[tmp_path / "missing" / "spec.yaml"] = "no such file"
    (tmp_path / "file").write_text("")
    cases[tmp_path / "file" / "spec.yaml"] = "cannot be read: Not a directory"
    for path, expected in cases.items():
        with pytest.raises(SpecError) as caught:
            load_spec(path)
        assert str(caught.value) == f"{path}: {expected}"

    def denied(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("core.spec_yaml.os.open", denied)  # root reads any file: simulate a user's chmod 000
    with pytest.raises(SpecError, match="secret.yaml: cannot be read: permission denied$"):
        load_spec(tmp_path / "secret.yaml")


def test_byte_order_mark_dates_and_json_are_fine(tmp_path: Path) -> None:
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_spec(tmp_path / "bom.yaml") == parse_spec_text(GOOD, "x")
    assert parse_spec_text(GOOD.replace("name: t", "name: 2024-01-01"), "x").name == "2024-01-01"  # text, not a date
    data = {
        "name": "t",
        "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
        "method": {"name": "paper"},
    }
    assert parse_spec_text(json.dumps(data, indent=2), "s.json") == parse_spec_text(GOOD, "s.yaml")


def test_json_escapes_beyond_the_basic_plane_read_as_in_json() -> None:
    """Python's json writes U+1F600 as two escaped halves, which YAML refuses; a JSON text reads as JSON."""
    data = _data(dataset={"uri": "/data/\U0001f600.npz", "primary": ["a"], "auxiliary": ["b"]})
    text = json.dumps(data)
    assert "\\ud83d\\ude00" in text and parse_spec_text(text, "s.json").dataset.uri == "/data/\U0001f600.npz"
    literal = GOOD.replace("name: t", "name: t\nx: '\\ud83d\\ude00'")  # YAML, not JSON: the backslashes stay
    with pytest.raises(SpecError, match=r"x: Extra inputs"):
        parse_spec_text(literal, "s.yaml")
    with pytest.raises(SpecError, match="s.json: YAML syntax error at line 1"):
        parse_spec_text('{"name": "\\ud800"}', "s.json")  # half a character


def test_many_problems_are_cut_to_ten_and_odd_keys_are_escaped() -> None:
    text = GOOD + "".join(f"k{i}: 1\n" for i in range(25)) + '"a\\nb\\u2028c": 1\n'
    with pytest.raises(SpecError) as caught:
        parse_spec_text(text, "s.yaml")
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and message.count("Extra inputs") == 10 and message.endswith("and 16 more")
    with pytest.raises(SpecError, match=r"^s.yaml: invalid spec: 'a\\nb\\u2028c': Extra inputs are not permitted$"):
        parse_spec_text(GOOD + '"a\\nb\\u2028c": 1\n', "s.yaml")


@pytest.mark.parametrize(
    ("fragment", "field"),
    [
        ("train: {epochs: true}", "train.epochs"),
        ("train: {epochs: '3'}", "train.epochs"),
        ("train: {epochs: 3.0}", "train.epochs"),
        ("train: {seed: 1.5}", "train.seed"),
        ("train: {amp: 1}", "train.amp"),
        ("train: {amp: 'true'}", "train.amp"),
        ("train: {lr: '0.1'}", "train.lr"),
        ("train: {lr: false}", "train.lr"),
        ("model: {hidden_dim: 64.0}", "model.hidden_dim"),
        ("method: {name: paper, proj_layers: true}", "method.paper.proj_layers"),
        ("method: {name: paper, proj_layers: 1.0}", "method.paper.proj_layers"),
        ("checkpoint: {every_epochs: '2'}", "checkpoint.every_epochs"),
        ("resources: {gpus: false}", "resources.gpus"),
    ],
)
def test_types_are_strict(fragment: str, field: str) -> None:
    text = GOOD.replace("method: {name: paper}\n", "" if fragment.startswith("method") else "method: {name: paper}\n")
    with pytest.raises(SpecError, match=f"^s.yaml: invalid spec: {field}: Input should be a valid "):
        parse_spec_text(text + fragment + "\n", "s.yaml")


def test_a_float_field_takes_an_integer_and_hashes_as_the_float() -> None:
    as_int = parse_spec_text(GOOD + "train: {lr: 1, weight_decay: 0}\n", "s.yaml")
    as_float = parse_spec_text(GOOD + "train: {lr: 1.0, weight_decay: 0.0}\n", "s.yaml")
    assert as_int.train.lr == 1.0 and isinstance(as_int.train.lr, float)
    assert as_int.spec_hash() == as_float.spec_hash()


def test_exponent_floats_are_numbers_as_in_json() -> None:
    """YAML 1.1 reads ``1e-3`` as text; a spec reads it as JSON and YAML 1.2 do."""
    spec = parse_spec_text(GOOD + "train: {lr: 1e-3, weight_decay: 5E-4}\nmodel: {dropout: .5e-1}\n", "s.yaml")
    assert (spec.train.lr, spec.train.weight_decay, spec.model.dropout) == (0.001, 0.0005, 0.05)
    assert parse_spec_text(GOOD.replace("name: t", "name: '1e3'"), "s.yaml").name == "1e3"  # quoted: text


@pytest.mark.parametrize(
    ("written", "value"),
    [("+1", 1), ("-0", 0), (".5", 0.5), ("-.5", -0.5), ("+.5", 0.5), ("1.", 1.0), ("1.5e3", 1500.0), ("0.25", 0.25)],
)
def test_numbers_yaml_1_2_writes_are_numbers(written: str, value: float) -> None:
    """A leading + and a bare dot mean the same to every reader: numbers, as in YAML 1.2."""
    data = parse_spec_mapping(f"x: {written}\n", "s.yaml")
    assert data == {"x": value} and type(data["x"]) is type(value)


@pytest.mark.parametrize("written", ["010", "0x10", "1:30", "1_0", "0o10", "1e-3"])
def test_quoted_numbers_stay_text(written: str) -> None:
    assert parse_spec_mapping(f"x: '{written}'\ny: \"{written}\"\n", "s.yaml") == {"x": written, "y": written}


def test_a_path_with_a_nul_character_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"^a\\0b.yaml: is not a valid path: it contains a NUL character$"):
        load_spec("a\0b.yaml")


def test_non_finite_numbers_from_json_are_refused_by_the_model() -> None:
    """Python's json reads Infinity: the API's body reaches the model with it, and the model refuses it."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be a finite number"):
        JobSpec.model_validate(json.loads(json.dumps(_data(train={"weight_decay": float("inf")}))))


def _data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
        "method": {"name": "paper"},
    }
    return {**data, **overrides}


def _bench_accuracy() -> Any:
    location = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "bench" / "accuracy.py")
    assert location and location.loader
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    return module


def test_hashes_of_existing_specs_are_unchanged() -> None:
    """The bench caches runs by spec hash and the API's idempotency compares them: strictness changed neither."""
    assert load_spec(ROOT / "examples" / "mfeat-paper.yaml").spec_hash() == (
        "a829d2cf98ec70eb6d71c9a08be81db7015a63d95b247e5a4f089b9fc5d47443"
    )
    assert load_spec(ROOT / "examples" / "basic_motions-paper.yaml").spec_hash() == (
        "9128e0f9ad989d44d044b7276523ff4d7f0366e70efa123d3c63dc6864512383"
    )
    bench = _bench_accuracy()

    def digest(rows: list[str]) -> tuple[int, str]:
        hashes = sorted(
            JobSpec.model_validate(bench.make_spec(dataset, setting, row, trial, 3)).spec_hash()
            for dataset in bench.DATASETS
            for setting in bench.SETTINGS
            for row in rows
            for trial in range(4)
        )
        return len(hashes), hashlib.sha256("".join(hashes).encode()).hexdigest()

    # Pinned at the issue-8 bench (new rows, mfeat 256 wide): a spec change that moves these hashes
    # invalidates the bench's cache; change the pin only with the bench itself. Rows added later are
    # pinned apart, so the older rows' pin shows they kept their hashes.
    older = [row for row in bench.GRIDS if row != "mst_distill"]
    assert digest(older) == (264, "87b0ad18f2160eda36cf2903c8c13e32a75e7c6112cf9fe9a56e130ce91a227d")
    assert digest(["mst_distill"]) == (24, "f783b4f814bac4d618adcdde54f81b5a9839513e8975e43146594ac3c2943d61")


# The cross-field rules in the JSON schema --------------------------------------------------------

SCHEMA = JobSpec.model_json_schema()
RETRIEVAL = {"uri": "/d.npz", "primary": ["video"], "auxiliary": ["flow"], "retrieval_target": "text"}
UPLOADED = {"id": 3, "primary": ["a"], "auxiliary": ["b"]}
VALID = {
    "paper on mfeat": _data(),
    "uploaded, regression": _data(dataset=UPLOADED, task="regression"),
    "retrieval with its target": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "crd"}),
    "label smoothing for classification": _data(dataset=UPLOADED, train={"label_smoothing": 0.1}),
    "explicit nulls": _data(dataset={**UPLOADED, "name": None, "uri": None, "retrieval_target": None}),
    "probe of a regression": _data(dataset=UPLOADED, task="regression", kind="probe"),
    "a reference": _data(reference={"method": "student_only", "resamples": 500}),
    **{f"method {name}": _data(method={"name": name}) for name in METHOD_NAMES},
}
# Broken cross-field rules that JSON Schema can state: pydantic and the schema both refuse them.
BROKEN = {
    "no source": _data(dataset={"primary": ["a"], "auxiliary": ["b"]}),
    "two sources": _data(dataset={**UPLOADED, "uri": "/d.npz"}),
    "three sources": _data(dataset={**UPLOADED, "uri": "/d.npz", "name": "mfeat"}),
    "unknown built-in": _data(dataset={"name": "cifar", "primary": ["a"], "auxiliary": ["b"]}),
    "built-in without that modality": _data(dataset={"name": "mfeat", "primary": ["fourier"], "auxiliary": ["fac"]}),
    "built-in as regression": _data(task="regression"),
    "retrieval without target": _data(dataset={**RETRIEVAL, "retrieval_target": None}, task="retrieval"),
    "target without retrieval": _data(dataset=RETRIEVAL, task="regression"),
    "retrieval with logit_kd": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "logit_kd"}),
    "retrieval with kd_weight": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "paper", "kd_weight": 1}),
    "retrieval with dml": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "dml"}),
    "retrieval with mfh_kd": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "mfh_kd"}),
    "retrieval with mst_distill": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "mst_distill"}),
    "mst_distill on a wide representation": _data(method={"name": "mst_distill"}, model={"repr_dim": 513}),
    "c2kd for regression": _data(dataset=UPLOADED, task="regression", method={"name": "c2kd"}),
    "c2kd for multilabel": _data(dataset=UPLOADED, task="multilabel", method={"name": "c2kd"}),
    "probe of retrieval": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "crd"}, kind="probe"),
    "probe with a reference": _data(kind="probe", reference={}),
    "retrieval with a reference": _data(dataset=RETRIEVAL, task="retrieval", method={"name": "crd"}, reference={}),
    "label smoothing for regression": _data(dataset=UPLOADED, task="regression", train={"label_smoothing": 0.1}),
    "modality twice": _data(dataset={**UPLOADED, "primary": ["a", "a"]}),
    "reserved key": _data(dataset={**UPLOADED, "auxiliary": ["label"]}),
}
# What JSON Schema cannot state: pydantic refuses, the descriptions say it.
DESCRIBED_ONLY = {
    "in both lists": (_data(dataset={**UPLOADED, "auxiliary": ["a"]}), "none of them also in primary"),
    "target is a primary": (
        _data(dataset={**RETRIEVAL, "retrieval_target": "video"}, task="retrieval"),
        "not one of primary or auxiliary",
    ),
    "fractions": (_data(dataset={**UPLOADED, "val_fraction": 0.4, "test_fraction": 0.4}), "must stay below 0.8"),
}


def _schema_errors(data: dict[str, Any]) -> list[str]:
    return [error.message for error in jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)]


def test_the_schema_is_valid_json_schema_and_openapi_3_1() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    components = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = {**components.pop("$defs"), "JobSpec": components}
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}}}
    operation = {"requestBody": body, "responses": {"200": {"description": "ok"}}}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/jobs": {"post": operation}},
        "components": {"schemas": schemas},
    }
    validate_openapi(document)


@pytest.mark.parametrize("name", VALID)
def test_valid_specs_pass_pydantic_and_the_schema(name: str) -> None:
    spec = JobSpec.model_validate(VALID[name])
    assert _schema_errors(VALID[name]) == [] and _schema_errors(spec.model_dump(mode="json")) == []


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_the_schema(path: Path) -> None:
    assert _schema_errors(load_spec(path).model_dump(mode="json", exclude_unset=True)) == []


@pytest.mark.parametrize("name", BROKEN)
def test_cross_field_rules_are_in_the_schema(name: str) -> None:
    with pytest.raises(SpecError):
        parse_spec_text(json.dumps(BROKEN[name]), "s.json")
    assert _schema_errors(BROKEN[name]), f"the schema accepts {name!r}"


@pytest.mark.parametrize("name", DESCRIBED_ONLY)
def test_rules_json_schema_cannot_state_are_described(name: str) -> None:
    data, description = DESCRIBED_ONLY[name]
    with pytest.raises(SpecError):
        parse_spec_text(json.dumps(data), "s.json")
    assert description in json.dumps(SCHEMA["$defs"]["DatasetSpec"])
    assert "disjoint" in SCHEMA["description"] and "< 0.8" in SCHEMA["description"]
