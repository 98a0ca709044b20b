"""The job spec: valid specs load, every invalid one names the field and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import SpecError
from core.spec import METHOD_NAMES, JobSpec, describe_validation_error, load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MFEAT = {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]}


def spec_data(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {"name": "t", "dataset": dict(MFEAT), "method": {"name": "paper"}}
    data.update(overrides)
    return data


def errors_of(data: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    return "\n".join(describe_validation_error(info.value))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    assert load_spec(path).name


def test_json_and_yaml_give_the_same_spec(tmp_path: Path) -> None:
    data = spec_data()
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "s.yaml").write_text(
        "name: t\ndataset:\n  name: mfeat\n  primary: [fou, zer, mor]\n"
        "  auxiliary: [fac, pix, kar]\nmethod: {name: paper}\n"
    )
    assert load_spec(tmp_path / "s.json") == load_spec(tmp_path / "s.yaml")


def test_defaults_are_filled_and_hash_is_stable() -> None:
    spec = JobSpec.model_validate(spec_data())
    assert spec.method.name == "paper" and spec.method.gamma == 0.1
    assert spec.spec_hash() == JobSpec.model_validate(spec_data()).spec_hash()
    assert spec.spec_hash() != JobSpec.model_validate(spec_data(train={"seed": 1})).spec_hash()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_key_validates(method: str) -> None:
    assert JobSpec.model_validate(spec_data(method={"name": method})).method.name == method


def test_unknown_top_level_field_is_named() -> None:
    assert "epochz: Extra inputs are not permitted" in errors_of(spec_data(epochz=3))


def test_unknown_nested_field_is_named_with_its_path() -> None:
    assert "train.learning_rate: Extra inputs are not permitted" in errors_of(spec_data(train={"learning_rate": 1}))


def test_unknown_method_key_lists_the_known_ones() -> None:
    message = errors_of(spec_data(method={"name": "distil_harder"}))
    assert "method" in message and "'paper'" in message and "'student_only'" in message


def test_parameter_of_another_method_is_rejected() -> None:
    assert "method.mi_joint.gamma: Extra inputs are not permitted" in errors_of(
        spec_data(method={"name": "mi_joint", "gamma": 1})
    )


def test_modality_in_both_lists() -> None:
    dataset = dict(MFEAT, auxiliary=["fac", "fou"])
    assert "modality ['fou'] is in both dataset.primary and dataset.auxiliary" in errors_of(spec_data(dataset=dataset))


def test_empty_primary_list() -> None:
    assert "dataset.primary: List should have at least 1 item" in errors_of(spec_data(dataset=dict(MFEAT, primary=[])))


def test_dataset_needs_exactly_one_source() -> None:
    for extra in ({"uri": "/tmp/x.npz"}, {"id": 3}):
        assert "exactly one of dataset.id" in errors_of(spec_data(dataset=dict(MFEAT, **extra)))
    neither = {k: v for k, v in MFEAT.items() if k != "name"}
    assert "exactly one of dataset.id" in errors_of(spec_data(dataset=neither))
    by_id = {**neither, "primary": ["a"], "auxiliary": ["b"], "id": 3}
    assert JobSpec.model_validate(spec_data(dataset=by_id)).dataset.id == 3
    assert "greater than or equal to 1" in errors_of(spec_data(dataset={**by_id, "id": 0}))


def test_unknown_builtin_modality_lists_what_exists() -> None:
    message = errors_of(spec_data(dataset=dict(MFEAT, primary=["fourier"])))
    assert "has no modality ['fourier']" in message and "'fou'" in message


def test_out_of_range_values_name_the_field() -> None:
    message = errors_of(spec_data(train={"lr": -1}, method={"name": "paper", "temperature": 0}))
    assert "train.lr: Input should be greater than 0" in message
    assert "method.paper.temperature: Input should be greater than 0" in message


def test_retrieval_needs_a_target_and_rejects_logit_kd() -> None:
    dataset = {"uri": "/x.npz", "primary": ["video"], "auxiliary": ["flow"]}
    assert "retrieval_target is required" in errors_of(spec_data(dataset=dataset, task="retrieval"))
    with_target = dict(dataset, retrieval_target="text")
    assert "needs logits" in errors_of(spec_data(dataset=with_target, task="retrieval", method={"name": "logit_kd"}))
    JobSpec.model_validate(spec_data(dataset=with_target, task="retrieval"))


def test_resources_name_processes_and_device_and_the_old_gpus_field_still_reads() -> None:
    spec = JobSpec.model_validate(spec_data(resources={"gpus": 2}))
    assert (spec.resources.device, spec.resources.procs_per_node, spec.resources.world_size) == ("cuda", 2, 2)
    assert spec.model_dump()["resources"]["gpus"] is None  # stored in the new form
    assert JobSpec.model_validate(spec_data(resources={"gpus": 0})).resources.device == "cpu"
    assert "disagree" in errors_of(spec_data(resources={"gpus": 2, "procs_per_node": 3}))
    assert "disagree" in errors_of(spec_data(resources={"gpus": 1, "device": "cpu"}))
    assert "resources.procs_per_node: Input should be less than or equal to 64" in errors_of(
        spec_data(resources={"procs_per_node": 65})
    )
    assert "train.device 'cpu' and resources.device 'cuda' disagree" in errors_of(
        spec_data(resources={"device": "cuda"}, train={"device": "cpu"})
    )
    assert "at least 2 rows for each of the 8 processes" in errors_of(
        spec_data(resources={"nodes": 2, "procs_per_node": 4}, train={"batch_size": 8})
    )


def test_resources_are_not_in_the_spec_hash() -> None:
    """A run checkpointed at one world size resumes at another under the same hash, and old hashes hold."""
    base = JobSpec.model_validate(spec_data())
    more = JobSpec.model_validate(spec_data(resources={"nodes": 2, "procs_per_node": 4, "device": "cuda"}))
    assert base.spec_hash() == more.spec_hash()


def test_non_mapping_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="list.yaml: a job spec must be a mapping, got a list"):
        load_spec(tmp_path / "list.yaml")
