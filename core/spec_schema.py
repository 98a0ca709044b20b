"""The job spec's cross-field rules as JSON Schema, for ``/openapi.json`` and what is generated from it.

The validators in :mod:`core.spec` check every rule; these fragments state the ones JSON Schema can
(OpenAPI 3.1 schemas are JSON Schema 2020-12: ``if``/``then``/``else``, ``oneOf``, ``not``,
``const``), so a generated client or a schema-driven fuzzer knows them too. What JSON Schema cannot
say (two lists disjoint, a bound on the sum of two fields) is in the field descriptions instead.
Each call builds fresh dicts: a schema consumer that edits its copy cannot change the next one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: Methods whose distillation is on logits: they need a task with logits (not retrieval).
LOGIT_METHODS = frozenset({"logit_kd", "dml", "c2kd", "mfh_kd", "mst_distill"})
#: The largest model.repr_dim mst_distill accepts: its MaskNet embeds each sample into repr_dim tokens of
#: about repr_dim/2 values (the source's shape: repr_dim^3 / 2 weights), so it grows with the cube.
MST_MAX_REPR = 512
#: The most elements mst_distill's channel attention may hold per step: train.batch_size x repr_dim^2 x
#: mask_heads (the attention weights of one MaskNet), 2^28 float32 values, 1 GiB. A product JSON Schema
#: cannot state; the spec's validator checks it and the field descriptions say it.
MST_MAX_ATTENTION = 1 << 28

JsonSchema = dict[str, Any]


def _given(field: str, json_type: str) -> JsonSchema:
    """``field`` is present and not null."""
    return {"required": [field], "properties": {field: {"type": json_type}}}


def dataset_rules(builtins: Mapping[str, Sequence[str]]) -> Callable[[JsonSchema], None]:
    """DatasetSpec's rules: exactly one of id, name, uri; a built-in names its own modalities."""

    def add(schema: JsonSchema) -> None:
        sources = {"id": "integer", "name": "string", "uri": "string"}
        # "Exactly one" with ``not`` rather than ``oneOf``: a generator reads a ``oneOf`` as a union of
        # three partial models, and the spec's dataset would lose its type in a generated client.
        none_given = {"not": {"properties": {field: {"type": "null"} for field in sources}}}
        two_given = [
            {"not": {"required": [a, b], "properties": {a: {"type": sources[a]}, b: {"type": sources[b]}}}}
            for a, b in itertools.combinations(sources, 2)
        ]
        names_its_modalities = [
            {
                "if": {"required": ["name"], "properties": {"name": {"const": name}}},
                "then": {
                    "properties": {field: {"items": {"enum": list(modalities)}} for field in ("primary", "auxiliary")}
                },
            }
            for name, modalities in builtins.items()
        ]
        schema["allOf"] = [none_given, *two_given, *names_its_modalities]

    return add


def builtin_name(builtins: Mapping[str, Sequence[str]]) -> Callable[[JsonSchema], None]:
    """``dataset.name``'s schema: null or the name of a built-in dataset."""

    def narrow(schema: JsonSchema) -> None:
        for option in schema["anyOf"]:
            if option.get("type") == "string":
                option["enum"] = list(builtins)

    return narrow


def add_job_rules(schema: JsonSchema) -> None:
    """JobSpec's rules: retrieval_target exactly for retrieval, no logit KD there; built-ins classify;
    label smoothing only for classification; mst_distill's bound on model.repr_dim; no reference for
    retrieval or a probe."""
    retrieval = {"required": ["task"], "properties": {"task": {"const": "retrieval"}}}
    no_logit_kd = {"properties": {"name": {"not": {"enum": sorted(LOGIT_METHODS)}}, "kd_weight": {"maximum": 0}}}
    schema["allOf"] = [
        {
            "if": retrieval,
            "then": {
                "properties": {
                    "dataset": _given("retrieval_target", "string"),
                    "method": no_logit_kd,
                    "kind": {"not": {"const": "probe"}},
                    "reference": {"type": "null"},
                }
            },
            "else": {"properties": {"dataset": {"properties": {"retrieval_target": {"type": "null"}}}}},
        },
        {
            "if": {"required": ["dataset"], "properties": {"dataset": _given("name", "string")}},
            "then": {"properties": {"task": {"const": "classification"}}},
        },
        {
            "if": {"required": ["task"], "properties": {"task": {"not": {"const": "classification"}}}},
            "then": {
                "properties": {
                    "train": {"properties": {"label_smoothing": {"maximum": 0}}},
                    "method": {"properties": {"name": {"not": {"const": "c2kd"}}}},
                }
            },
        },
        {
            "if": {"required": ["kind"], "properties": {"kind": {"const": "probe"}}},
            "then": {"properties": {"reference": {"type": "null"}}},
        },
        {
            "if": {
                "required": ["method"],
                "properties": {"method": {"properties": {"name": {"const": "mst_distill"}}}},
            },
            "then": {"properties": {"model": {"properties": {"repr_dim": {"maximum": MST_MAX_REPR}}}}},
        },
    ]
