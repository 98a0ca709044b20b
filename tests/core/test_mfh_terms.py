"""mfh_kd and its diagnosis: channel salience (cross-fitted ridge R^2 from the teacher's primary
encoders), decisiveness (accuracy drop under permutation), the channel choice and the masked KD term."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from core.models.network import MultimodalNet, Networks
from core.objectives import OBJECTIVES
from core.objectives.base import Batch, Forward
from core.objectives.losses import hinton_kd
from core.objectives.mfh_kd import MFHKDObjective
from core.objectives.salience import channel_salience, cross_fitted_r2, fit_ridge, permutation_drop
from core.spec import JobSpec, ModelSpec


def spec_of(method: dict[str, Any], *, seed: int = 0) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "mfh",
            "dataset": {"uri": "x.npz", "primary": ["a"], "auxiliary": ["b"]},
            "method": {"name": "mfh_kd", "teacher_epochs": 1, **method},
            "train": {"epochs": 1, "seed": seed},
        }
    )


def test_cross_fitted_r2_is_high_for_an_explained_column_and_low_for_noise_and_zero_for_a_constant() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=generator)
    explained = x @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0]) + 0.05 * torch.randn(400, generator=generator)
    noise = torch.randn(400, generator=generator)
    constant = torch.full((400,), 3.0)
    r2 = cross_fitted_r2(x, torch.stack([explained, noise, constant], dim=1))
    assert r2[0] > 0.95 and r2[1] < 0.05 and r2[2] == 0.0
    # Cross-fitted: 300 noise features on 400 rows would fit noise perfectly in-sample.
    wide = torch.randn(400, 300, generator=generator)
    assert cross_fitted_r2(wide, noise[:, None])[0] < 0.1


def two_modality_teacher() -> MultimodalNet:
    """A teacher on a (primary) and b (auxiliary), 4 inputs each, whose z channel 0 reads only a's
    encoder and channel 1 only b's; its head predicts class 1 when channel 0 is large."""
    torch.manual_seed(0)
    spec = ModelSpec(hidden_dim=8, repr_dim=2, encoder_layers=1, dropout=0.0)
    teacher = MultimodalNet({"a": (4,), "b": (4,)}, spec, output_dim=2)
    with torch.no_grad():
        weight = torch.zeros(2, 16)
        weight[0, :8], weight[1, 8:] = 1.0, 1.0  # concat order: a's 8 features, then b's
        teacher.fuse.weight.copy_(weight)  # type: ignore[union-attr]
        teacher.fuse.bias.zero_()  # type: ignore[union-attr]
        teacher.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        teacher.head.bias.zero_()
    return teacher


def test_salience_marks_the_channel_the_primary_modality_explains_as_general() -> None:
    teacher = two_modality_teacher()
    generator = torch.Generator().manual_seed(1)
    inputs = {"a": torch.randn(600, 4, generator=generator), "b": torch.randn(600, 4, generator=generator)}
    z = teacher.represent(inputs).detach()
    median = z[:, 0].median()
    labels = (z[:, 0] > median).long()
    with torch.no_grad():  # the head's decision threshold at the median: the teacher is right on every row
        teacher.head.bias.copy_(torch.stack([median, -median]))
    found = channel_salience(teacher, inputs, ["a"], labels)
    assert found.r2[0] > 0.9 and found.r2[1] < 0.1
    assert torch.allclose(found.mean, z.mean(0))
    assert found.decisive is not None and found.decisive[0] > 0.1 and found.decisive[1] == 0.0
    # From the auxiliary side the picture flips.
    flipped = channel_salience(teacher, inputs, ["b"], None)
    assert flipped.r2[1] > 0.9 and flipped.r2[0] < 0.1 and flipped.decisive is None
    assert teacher.training  # the diagnosis leaves the network's mode as it found it


def test_permutation_drop_ignores_unlabelled_rows() -> None:
    teacher = two_modality_teacher()
    z = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [3.0, 0.0], [-3.0, 0.0]])
    labels = torch.tensor([1, 0, 1, -1])
    drops = permutation_drop(teacher, z, labels)
    assert drops[1] == 0.0 and drops[0] >= 0.0
    assert permutation_drop(teacher, z, torch.tensor([-1, -1, -1, 1])).tolist() == [0.0, 0.0]


def objective(**method: Any) -> MFHKDObjective:
    made = OBJECTIVES.get("mfh_kd")(spec_of(method), repr_dim=4, n_train=8, output_dim=2)
    assert isinstance(made, MFHKDObjective)
    return made


@pytest.mark.parametrize(
    ("channels", "ratio", "kept"),
    [
        ("general", 0.5, [1.0, 0.0, 1.0, 0.0]),
        ("specific", 0.25, [0.0, 0.0, 0.0, 1.0]),
        ("general", 0.01, [0.0, 0.0, 1.0, 0.0]),
    ],
)
def test_choice_keeps_the_share_of_channels_asked_for(channels: str, ratio: float, kept: list[float]) -> None:
    r2 = torch.tensor([0.6, 0.3, 0.9, 0.1])
    assert objective(channels=channels, keep_ratio=ratio).choose(r2).tolist() == kept


def test_random_choice_is_seeded_by_the_training_seed() -> None:
    r2 = torch.arange(40.0)
    first = objective(channels="random").choose(r2)
    assert torch.equal(first, objective(channels="random").choose(r2)) and first.sum() == 20  # keep_ratio 0.5
    other = OBJECTIVES.get("mfh_kd")(spec_of({"channels": "random"}, seed=5), repr_dim=4, n_train=8, output_dim=2)
    assert not torch.equal(first, other.choose(r2))  # type: ignore[operator]


def networks_with(teacher: MultimodalNet) -> Networks:
    spec = ModelSpec(hidden_dim=8, repr_dim=2, encoder_layers=1, dropout=0.0)
    return Networks(
        student=MultimodalNet({"a": (4,)}, spec, 2), teacher=teacher, auxiliary=MultimodalNet({"b": (4,)}, spec, 2)
    )


def test_begin_epoch_chooses_once_at_the_start_of_phase_two_and_the_choice_is_checkpointed() -> None:
    teacher = two_modality_teacher()
    made = OBJECTIVES.get("mfh_kd")(spec_of({"keep_ratio": 0.5}), repr_dim=2, n_train=600, output_dim=2)
    assert isinstance(made, MFHKDObjective)
    generator = torch.Generator().manual_seed(1)
    inputs = {"a": torch.randn(600, 4, generator=generator), "b": torch.randn(600, 4, generator=generator)}
    nets = networks_with(teacher)
    assert made.begin_epoch(nets, inputs, None, 0) is None and not made.chosen  # phase 1
    note = made.begin_epoch(nets, inputs, None, 1)
    assert note is not None and "keeping 1 of 2" in note
    assert made.kept.tolist() == [1.0, 0.0]  # channel 0 is the one a explains
    assert made.begin_epoch(nets, {k: -v for k, v in inputs.items()}, None, 1) is None  # not chosen again
    state = made.state_dict()
    assert {"kept", "channel_mean", "salience"} <= set(state)
    again = OBJECTIVES.get("mfh_kd")(spec_of({"keep_ratio": 0.5}), repr_dim=2, n_train=600, output_dim=2)
    again.load_state_dict(state)
    assert again.chosen and again.begin_epoch(nets, inputs, None, 1) is None  # type: ignore[attr-defined]


def test_the_kd_term_targets_the_teacher_head_on_the_masked_representation() -> None:
    teacher = two_modality_teacher()
    made = OBJECTIVES.get("mfh_kd")(
        spec_of({"kd_weight": 0.5, "kd_temperature": 2.0}), repr_dim=2, n_train=2, output_dim=2
    )
    assert isinstance(made, MFHKDObjective)
    made.kept.copy_(torch.tensor([0.0, 1.0]))
    made.channel_mean.copy_(torch.tensor([0.5, -7.0]))
    z_t = torch.tensor([[3.0, 1.0], [-1.0, 2.0]])
    kept_channel = OBJECTIVES.get("mfh_kd")(spec_of({}), repr_dim=2, n_train=2, output_dim=2)
    kept_channel.kept.copy_(torch.tensor([1.0, 0.0]))  # type: ignore[operator]
    kept_channel.channel_mean.copy_(torch.tensor([0.25, -7.0]))  # type: ignore[operator]
    # Channel 0 kept as it is (its mean plays no part), channel 1 at its mean: head logits [-z0, z0].
    logits = kept_channel.teacher_logits(networks_with(teacher), z_t)  # type: ignore[operator]
    assert logits.tolist() == [[-3.0, 3.0], [1.0, -1.0]]
    student = torch.tensor([[0.2, -0.1], [1.0, 0.0]], requires_grad=True)
    fwd = Forward(z={"teacher": z_t}, out={"student": student, "teacher": teacher.head(z_t)}, target={})
    terms = made.distill_terms(networks_with(teacher), Batch({}, torch.tensor([0, -1]), torch.arange(2)), fwd, 1)
    # Channel 0 replaced by its mean 0.5 in both rows: head logits [-0.5, 0.5] for each.
    expected = 0.5 * hinton_kd("classification", student, torch.tensor([[-0.5, 0.5], [-0.5, 0.5]]), 2.0).item()
    assert terms["kd"].item() == pytest.approx(expected, abs=1e-6)
    by_hand = 0.0
    for row in student.tolist():
        p = [math.exp(v / 2) for v in (-0.5, 0.5)]
        q = [math.exp(v / 2) for v in row]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        by_hand += 4 * sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)) / 2
    assert terms["kd"].item() == pytest.approx(0.5 * by_hand, abs=1e-6)
    terms["kd"].backward()
    assert student.grad is not None and all(p.grad is None for p in teacher.parameters())
    assert made.distill_terms(networks_with(teacher), Batch({}, torch.tensor([0, 1]), torch.arange(2)), fwd, 0) == {}


def test_a_method_with_no_channels_chosen_refuses_to_distil() -> None:
    made = objective()
    fwd = Forward(z={"teacher": torch.zeros(2, 4)}, out={"student": torch.zeros(2, 2)}, target={})
    with pytest.raises(AssertionError, match="begin_epoch"):
        made.distill_terms(None, Batch({}, torch.tensor([0, 1]), torch.arange(2)), fwd, 1)  # type: ignore[arg-type]


def test_fit_ridge_matches_the_closed_form_on_standardised_columns() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(50, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor(
        [5.0, -2.0, 0.3]
    )
    y = x @ torch.tensor([[1.0], [0.2], [-3.0]], dtype=torch.float64) + 4.0
    design = (x - x.mean(0)) / x.std(0)  # per column
    weights = torch.linalg.solve(
        design.T @ design + 0.1 * 50 * torch.eye(3, dtype=torch.float64), design.T @ (y - y.mean(0))
    )
    expected = design @ weights + y.mean(0)
    assert torch.allclose(fit_ridge(x, y).predict(x), expected, atol=1e-9)


def test_cross_fitted_r2_needs_four_rows_clips_below_zero_and_works_at_any_scale() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    assert cross_fitted_r2(x, 2 * x).shape == (1,) and cross_fitted_r2(x, 2 * x)[0] > 0  # two rows a half: fitted
    assert cross_fitted_r2(x[:3], 2 * x[:3]).tolist() == [0.0]  # fewer: zeros, one per column
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(40, 8, generator=generator)
    tiny = 1e-3 * (x @ torch.arange(8.0))  # its total sum of squares is far below 1
    unrelated = torch.randn(40, generator=generator)  # cross-fitted, worse than the mean: negative, clipped
    r2 = cross_fitted_r2(x, torch.stack([tiny, unrelated], dim=1))
    assert r2[0] > 0.95 and r2[1] == 0.0
    # A golden value: y = x + noise with known residuals (fitted by hand in float64 on alternate rows).
    xs = torch.arange(8.0)[:, None]
    ys = xs[:, 0] + torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5])
    residual = torch.zeros(8, dtype=torch.float64)
    for fit, score in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        residual[score] = ys[score].double() - fit_ridge(xs[fit], ys[fit][:, None]).predict(xs[score])[:, 0]
    expected = 1 - (residual**2).sum() / ((ys.double() - ys.double().mean()) ** 2).sum()
    assert cross_fitted_r2(xs, ys[:, None])[0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert cross_fitted_r2(xs, 0.01 * ys[:, None])[0].item() == pytest.approx(
        expected.item(), abs=1e-5
    )  # R^2 has no unit


def test_the_choice_is_logged_with_the_r2_of_the_kept_and_dropped_channels() -> None:
    teacher = two_modality_teacher()
    generator = torch.Generator().manual_seed(1)
    inputs = {"a": torch.randn(600, 4, generator=generator), "b": torch.randn(600, 4, generator=generator)}
    half = OBJECTIVES.get("mfh_kd")(spec_of({"keep_ratio": 0.5}), repr_dim=2, n_train=600, output_dim=2)
    note = half.begin_epoch(networks_with(teacher), inputs, None, 1)  # type: ignore[attr-defined]
    r2 = half.salience  # type: ignore[attr-defined]
    assert note is not None and f"{r2[0].item():.3f} kept, {r2[1].item():.3f} dropped" in note
    every = OBJECTIVES.get("mfh_kd")(spec_of({"keep_ratio": 1.0}), repr_dim=2, n_train=600, output_dim=2)
    note = every.begin_epoch(networks_with(teacher), inputs, None, 1)  # type: ignore[attr-defined]
    assert note is not None and "keeping 2 of 2" in note and "nan dropped" in note
