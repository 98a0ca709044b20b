"""Helpers shared by the local commands' tests (a plain module: test files cannot import conftest)."""

from __future__ import annotations

TINY_MFEAT_SPEC = """
name: tiny-mfeat
dataset: {name: mfeat, primary: [fou, zer], auxiliary: [mor]}
model: {hidden_dim: 8, repr_dim: 8}
method: {name: paper}
train: {epochs: 1, batch_size: 256}
"""
