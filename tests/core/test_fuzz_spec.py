"""Fuzzers of the spec parser (issue 12, item 2): whatever the text or bytes, ``parse_spec_text`` and
``load_spec`` give a JobSpec or one SpecError whose message starts with the source and is one line,
never another exception. Small fixed budgets here; ``make fuzz`` (MMKD_FUZZ=long) runs them longer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import fuzz_budget

from core.errors import SpecError
from core.spec import BUILTIN_DATASETS, METHOD_NAMES, RESERVED_KEYS, JobSpec, load_spec, parse_spec_text
from core.spec_schema import LOGIT_METHODS
from core.spec_yaml import decode_spec

pytestmark = pytest.mark.fuzz
SOURCE = "fuzzed.yaml"
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
SCHEMA_VALIDATOR = jsonschema.Draft202012Validator(JobSpec.model_json_schema())


def fuzz(default: int, long: int) -> Any:
    """Hypothesis settings: ``default`` examples in the suite, ``long`` under ``make fuzz``; reproducible."""
    return settings(
        max_examples=fuzz_budget(default, long),
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def outcome(text: str, source: str = SOURCE) -> JobSpec | SpecError:
    """The property: a JobSpec, or a SpecError of one line (of bounded length) that starts with the source."""
    try:
        return parse_spec_text(text, source)
    except SpecError as exc:
        check_message(exc, source)
        return exc


def check_message(exc: SpecError, source: str) -> None:
    message = str(exc)
    assert message.startswith(f"{source}: "), message
    assert len(message.splitlines()) == 1 and len(message) < 4000, message


# (a) arbitrary text and bytes --------------------------------------------------------------------

YAMLISH = st.text(alphabet=st.sampled_from(list(":-[]{},#&*!|>'\"?%@`\\ \t\n\r.0123456789eE+_abnlty~")), max_size=120)


@fuzz(1_000, 50_000)
@given(st.one_of(st.text(max_size=200), YAMLISH))
def test_any_text(text: str) -> None:
    outcome(text)


@fuzz(500, 20_000)
@given(st.binary(max_size=200))
def test_any_bytes(data: bytes) -> None:
    try:
        text = decode_spec(data, SOURCE)
    except SpecError as exc:
        check_message(exc, SOURCE)
        return
    outcome(text)


@fuzz(100, 2_000)
@given(st.binary(max_size=300))
def test_any_file(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(data)
    try:
        load_spec(path)
    except SpecError as exc:
        check_message(exc, str(path))


# (c) generated valid specs -----------------------------------------------------------------------


def floats(low: float, high: float, *, exclude_low: bool = False, exclude_high: bool = False) -> Any:
    return st.floats(low, high, exclude_min=exclude_low, exclude_max=exclude_high, allow_nan=False)


MODALITY = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True).filter(lambda n: n not in RESERVED_KEYS)


@st.composite
def datasets(draw: st.DrawFn, task: str) -> dict[str, Any]:
    """A dataset block that fits ``task``: a built-in (classification only), an uploaded id or a uri."""
    kinds = ["id", "uri"] + (["name"] if task == "classification" else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "name":
        name = draw(st.sampled_from(sorted(BUILTIN_DATASETS)))
        modalities = draw(st.permutations(BUILTIN_DATASETS[name]))
        data: dict[str, Any] = {"name": name}
    else:
        modalities = draw(st.lists(MODALITY, min_size=3, max_size=6, unique=True))
        data = {"id": draw(st.integers(1, 2**31 - 1))} if kind == "id" else {"uri": draw(st.text(max_size=40))}
    cut = draw(st.integers(1, len(modalities) - 1))
    data["primary"], data["auxiliary"] = list(modalities[:cut]), list(modalities[cut:])
    if task == "retrieval":
        data["retrieval_target"] = draw(MODALITY.filter(lambda n: n not in modalities))
    val = draw(floats(0.0, 0.49, exclude_low=True))
    optional = {
        "label_fraction": floats(0.0, 1.0, exclude_low=True),
        "keep_unlabelled": st.booleans(),
        "val_fraction": st.just(val),
        "test_fraction": floats(0.0, min(0.49, 0.79 - val), exclude_low=True),
        "split_seed": st.integers(0, 2**40),
        "val_from_train_fraction": floats(0.0, 0.5, exclude_low=True, exclude_high=True),
    }
    return {**data, **draw(st.fixed_dictionaries({}, optional=optional))}


@st.composite
def methods(draw: st.DrawFn, task: str) -> dict[str, Any]:
    names = [
        name
        for name in METHOD_NAMES
        if not (task == "retrieval" and name in LOGIT_METHODS) and not (task != "classification" and name == "c2kd")
    ]
    name = draw(st.sampled_from(names))
    optional: dict[str, Any] = {}
    if name in ("logit_kd", "crd", "mi_joint", "mi_joint_aux", "paper", "dml", "mfh_kd", "mst_distill"):
        optional["kd_weight"] = st.just(0.0) if task == "retrieval" else floats(0.0, 10.0)
    if name in ("crd", "mi_joint", "mi_joint_aux", "paper"):
        optional |= {"temperature": floats(0.0, 10.0, exclude_low=True), "proj_layers": st.sampled_from([1, 2])}
    if name not in ("student_only", "teacher_only", "mi_joint", "mi_joint_aux", "paper", "dml", "mst_distill"):
        optional["teacher_epochs"] = st.one_of(st.none(), st.integers(1, 10_000))
    if name == "paper":
        optional |= {"gamma": floats(0.0, 5.0), "noise_dim": st.integers(0, 1024), "disc_lr": st.none()}
    if name == "c2kd":
        optional |= {"nt_weight": floats(0.0, 10.0), "tau_threshold": floats(-1.0, 1.0, exclude_high=True)}
    if name == "mst_distill":
        optional |= {
            "cotrain_epochs": st.one_of(st.none(), st.integers(1, 10_000)),
            "mask_epochs": st.one_of(st.none(), st.integers(1, 10_000)),
            "mask_heads": st.integers(1, 16),
            "routing": st.sampled_from(["top1", "soft"]),
            "balance_weight": floats(0.0, 10.0),
        }
    if name == "mfh_kd":
        optional |= {
            "keep_ratio": floats(0.0, 1.0, exclude_low=True),
            "channels": st.sampled_from(["general", "random"]),
        }
    return {"name": name, **draw(st.fixed_dictionaries({}, optional=optional))}


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    task = draw(st.sampled_from(["classification", "multilabel", "regression", "retrieval"]))
    train = {
        "epochs": st.integers(1, 10_000),
        "batch_size": st.integers(2, 65_536),
        "lr": floats(0.0, 10.0, exclude_low=True),
        "weight_decay": floats(0.0, 1.0),
        "optimizer": st.sampled_from(["adam", "adamw", "sgd"]),
        "grad_clip": st.one_of(st.none(), floats(0.0, 100.0, exclude_low=True)),
        "seed": st.integers(0, 2**31 - 1),
        "amp": st.booleans(),
        "max_minutes": st.one_of(st.none(), floats(0.0, 43_200.0, exclude_low=True)),
    }
    model = {"hidden_dim": st.integers(4, 8192), "dropout": floats(0.0, 1.0, exclude_high=True)}
    optional = {
        "task": st.just(task),
        "train": st.fixed_dictionaries({}, optional=train),
        "model": st.fixed_dictionaries({}, optional=model),
    }
    if task != "classification":
        del optional["task"]
    required = {
        "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,30}", fullmatch=True),
        "dataset": datasets(task),
        "method": methods(task),
    }
    data = draw(st.fixed_dictionaries(required, optional=optional))
    method, batch = data["method"], data.get("train", {}).get("batch_size")
    if method["name"] == "mst_distill" and batch is not None:  # its attention bound: batch x 64^2 x heads <= 2^28
        data["train"]["batch_size"] = max(2, min(batch, (1 << 28) // (64 * 64 * method.get("mask_heads", 3))))
    return {**data, "task": task} if task != "classification" else data


class Yaml12Dumper(yaml.SafeDumper):
    """PyYAML's dumper, quoting the strings this parser reads as numbers (YAML 1.2's ``1e3``).

    PyYAML writes YAML 1.1, where ``1e3`` is text; the spec reader follows JSON and YAML 1.2 and
    reads it as 1000.0, so a spec with a job named ``1e3`` written by plain ``yaml.safe_dump``
    does not come back: that is the price of ``lr: 1e-3`` meaning 0.001."""


Yaml12Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def serialisations(data: dict[str, Any]) -> dict[str, str]:
    return {
        "yaml block": yaml.dump(data, Dumper=Yaml12Dumper, sort_keys=False),
        "yaml flow": yaml.dump(data, Dumper=Yaml12Dumper, default_flow_style=True, width=60),
        "json": json.dumps(data, indent=2),
    }


@fuzz(250, 5_000)
@given(valid_specs())
def test_generated_valid_specs_round_trip(data: dict[str, Any]) -> None:
    """Any valid spec, written as block YAML, flow YAML or JSON, reads back as the same spec and hash;
    its canonical dump reads back too; and the JSON schema accepts both."""
    expected = JobSpec.model_validate(data)
    for form, text in serialisations(data).items():
        assert outcome(text) == expected, form
    canonical = expected.model_dump(mode="json")
    again = parse_spec_text(json.dumps(canonical), SOURCE)
    assert again == expected and again.spec_hash() == expected.spec_hash()
    assert not list(SCHEMA_VALIDATOR.iter_errors(data)) and not list(SCHEMA_VALIDATOR.iter_errors(canonical))


# (b) mutations of valid specs --------------------------------------------------------------------

OTHER_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts and lists."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths(value, (*prefix, index))
    return found


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = replaced(data[path[0]], path[1:], value)
    return copy


@fuzz(250, 5_000)
@given(valid_specs(), st.data())
def test_a_value_replaced_by_another_type(data: dict[str, Any], draw: st.DataObject) -> None:
    path = draw.draw(st.sampled_from(paths(data)))
    mutated = replaced(data, path, draw.draw(OTHER_VALUES))
    form = draw.draw(st.sampled_from(["yaml block", "yaml flow"]))
    text = yaml.dump(mutated, Dumper=Yaml12Dumper, default_flow_style=form == "yaml flow")
    result = outcome(text)
    if isinstance(result, JobSpec):  # accepted: then it is what pydantic makes of the same data
        assert result == JobSpec.model_validate(mutated)


KEY_LINE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*:")


@fuzz(100, 5_000)
@given(valid_specs(), st.data())
def test_a_duplicated_key_line_is_refused(data: dict[str, Any], draw: st.DataObject) -> None:
    one_line_values = yaml.dump(data, Dumper=Yaml12Dumper, sort_keys=False, width=10**9)
    lines = one_line_values.splitlines(keepends=True)
    candidates = [index for index, line in enumerate(lines) if KEY_LINE.match(line)]
    index = draw.draw(st.sampled_from(candidates))
    text = "".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])
    result = outcome(text)
    key = lines[index].split(":")[0].strip()
    assert isinstance(result, SpecError) and f"duplicate key '{key}' at line {index + 2}" in str(result), text


TAGS = [
    "!!python/object/apply:os.system",
    "!!python/name:os.system",
    "!!python/object:builtins.dict",
    "!!binary",
    "!!timestamp",
    "!!set",
    "!!omap",
    "!custom",
    "!!str",
    "!!int",
    "!!float",
    "!!bool",
    "!!null",
    "!!map",
    "!!seq",
    "!",
]
UNSAFE_TAGS = {tag for tag in TAGS if tag.startswith(("!!python", "!!binary", "!!timestamp", "!!set", "!!omap", "!c"))}
VALUE_START = re.compile(r"(?<=: )|(?<=- )")


@fuzz(250, 5_000)
@given(valid_specs(), st.sampled_from(TAGS), st.data())
def test_a_tag_inserted_before_a_value(data: dict[str, Any], tag: str, draw: st.DataObject) -> None:
    text = yaml.dump(data, Dumper=Yaml12Dumper, sort_keys=False)
    spots = [match.start() for match in VALUE_START.finditer(text)]
    spot = draw.draw(st.sampled_from(spots))
    result = outcome(text[:spot] + tag + " " + text[spot:])
    if tag in UNSAFE_TAGS:
        assert isinstance(result, SpecError)


@fuzz(20, 500)
@given(st.one_of(valid_specs().map(lambda data: yaml.dump(data, Dumper=Yaml12Dumper)), st.sampled_from(EXAMPLES)))
def test_truncated_at_every_position(spec: str | Path) -> None:
    text = spec.read_text() if isinstance(spec, Path) else spec
    for end in range(len(text) + 1):
        outcome(text[:end])
