"""The trainer: every method trains, resuming is exact, failures and cancels are clean."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.data.prepare import prepare
from core.engine import checkpoint as ckpt
from core.engine.checkpoint import LocalCheckpointStore
from core.engine.setup import build_run
from core.engine.trainer import train
from core.errors import MmkdError, NonFiniteLossError, TrainingCancelled
from core.spec import METHOD_NAMES, JobSpec
from core.tracking import NullTracker

TINY_MODEL = {"hidden_dim": 16, "repr_dim": 8, "dropout": 0.2}


def mfeat_spec(method: dict[str, Any], **train: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"name": "mfeat", "primary": ["fou", "mor"], "auxiliary": ["kar"], "label_fraction": 0.5},
            "model": TINY_MODEL,
            "method": method,
            "train": {"epochs": 2, "batch_size": 256, **train},
            "checkpoint": {"every_epochs": 1},
        }
    )


class Recorder(NullTracker):
    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[Mapping[str, float]] = []
        self.epochs: list[Mapping[str, float]] = []
        self.stop_after = stop_after

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        self.steps.append(dict(losses))

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        self.epochs.append(dict(metrics))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


EXPECTED_TERMS = {
    "student_only": {"task_student", "task_teacher", "task_auxiliary"},
    "teacher_only": {"task_student", "task_teacher", "task_auxiliary"},
    "logit_kd": {"task_student", "kd"},
    "feature_kd": {"task_student", "hint"},
    "crd": {"task_student", "crd"},
    "mi_joint": {"task_student", "task_teacher", "task_auxiliary", "mi_ts"},
    "mi_joint_aux": {"task_student", "task_teacher", "task_auxiliary", "mi_ts", "mi_ta"},
    "paper": {"task_student", "task_teacher", "task_auxiliary", "mi_ts", "mi_ta", "adv", "disc"},
    "dml": {"task_student", "task_teacher", "task_auxiliary", "mutual_student", "mutual_teacher", "mutual_auxiliary"},
    "c2kd": {"task_student", "task_teacher", "proxy_teacher", "proxy_student", "nt_teacher", "nt_student"},
    "mfh_kd": {"task_student", "kd"},
    "mst_distill": {"task_student", "routed_kl", "balance"},
}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_and_reports_its_terms(method: str, tmp_path: Path) -> None:
    params = {"teacher_epochs": 1} if method in ("logit_kd", "feature_kd", "crd", "c2kd", "mfh_kd") else {}
    recorder = Recorder()
    summary = train(mfeat_spec({"name": method, **params}), workdir=tmp_path, tracker=recorder)
    last = set(recorder.steps[-1]) - {"total"}
    assert last == EXPECTED_TERMS[method]
    for network in ("student", "teacher", "auxiliary"):
        assert 0.0 <= summary[network]["accuracy"] <= 1.0
    assert (tmp_path / "summary.json").exists() and (tmp_path / "student" / "student.pt2").exists()
    assert "student/accuracy" in recorder.epochs[-1]


def test_crd_memory_bank_and_gru_sequences(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
            "model": {**TINY_MODEL, "sequence_encoder": "gru"},
            "method": {"name": "crd", "n_neg": 8, "teacher_epochs": 1, "kd_weight": 1.0},
            "train": {"epochs": 1, "batch_size": 8},
        }
    )
    recorder = Recorder()
    train(spec, workdir=tmp_path, tracker=recorder)
    assert {"crd", "kd"} <= set(recorder.steps[-1])


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = ckpt.from_bytes(LocalCheckpointStore(path).load_latest()[1])  # type: ignore[index]
    return {**state["nets"], **{f"objective.{k}": v for k, v in state["objective"].items()}}


@pytest.mark.parametrize(
    ("method", "every"),
    [
        ("paper", {"every_epochs": 2}),
        ("crd", {"every_steps": 3}),
        ("c2kd", {"every_steps": 4}),
        ("mfh_kd", {"every_steps": 4}),
        ("mst_distill", {"every_steps": 4}),
    ],
)
def test_resume_is_exact(method: str, every: dict[str, int], tmp_path: Path) -> None:
    """N epochs straight == stop part-way + resume from the checkpoint, bit for bit on CPU."""
    extra = {
        "crd": {"teacher_epochs": 2, "n_neg": 16},
        "paper": {"kd_weight": 1.0},
        "c2kd": {"teacher_epochs": 1},  # the teacher keeps training: a stop in phase 2 resumes both networks
        "mfh_kd": {"teacher_epochs": 1},  # the channels chosen at step 10 come back from the checkpoint
        # stage 1 epoch 1, masks epoch 2, routed epochs 3-4: the stop falls in stage 3, the masks and gate resume
        "mst_distill": {"cotrain_epochs": 1, "mask_epochs": 1, "mask_heads": 2},
    }[method]
    spec = mfeat_spec({"name": method, **extra}, epochs=4, batch_size=128).model_copy(
        update={"checkpoint": mfeat_spec({"name": method}).checkpoint.model_copy(update=every)}
    )
    straight = train(spec, workdir=tmp_path / "a", checkpoints=LocalCheckpointStore(tmp_path / "a" / "ck"))
    # 10 steps an epoch. Interrupt the second run a few steps after a checkpoint: paper at step 25
    # (checkpoint at the end of epoch 2, step 20); crd at step 26 (mid-epoch checkpoint at step 24);
    # c2kd, mfh_kd and mst_distill at step 26 too (checkpoint at step 24, in phase 2 or stage 3).
    stop_at, checkpointed = (25, 20) if method == "paper" else (26, 24)
    with pytest.raises(TrainingCancelled):
        train(
            spec,
            workdir=tmp_path / "b",
            checkpoints=LocalCheckpointStore(tmp_path / "b" / "ck"),
            tracker=Recorder(stop_after=stop_at),
        )
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG
    resumed = train(spec, workdir=tmp_path / "b", checkpoints=LocalCheckpointStore(tmp_path / "b" / "ck"))
    assert resumed["resumed_from_step"] == checkpointed
    a, b = weights(tmp_path / "a" / "ck"), weights(tmp_path / "b" / "ck")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight["student"] == resumed["student"]


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path / "ck")
    train(mfeat_spec({"name": "student_only"}), workdir=tmp_path, checkpoints=store)
    with pytest.raises(MmkdError, match="written for another spec"):
        train(mfeat_spec({"name": "student_only"}, seed=1), workdir=tmp_path, checkpoints=store)


def test_non_finite_loss_fails_with_the_step(tmp_path: Path) -> None:
    # Plain SGD at lr 10 without clipping blows the adversarial term up within a few steps.
    spec = mfeat_spec({"name": "paper"}, lr=10.0, optimizer="sgd", grad_clip=None, scheduler="none", epochs=20)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+: .*total=(nan|inf)") as info:
        train(spec, workdir=tmp_path)
    assert 1 <= info.value.step <= 100


def test_cancel_stops_at_a_step_boundary_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path / "ck")
    spec = mfeat_spec({"name": "paper"}, epochs=3, batch_size=128)
    with pytest.raises(TrainingCancelled) as info:
        train(spec, workdir=tmp_path, checkpoints=store, tracker=Recorder(stop_after=13))
    assert info.value.step == 13
    assert store.load_latest()[0] == 10  # type: ignore[index]  # epoch 1 ended at step 10
    assert not (tmp_path / "summary.json").exists()


def test_frozen_teacher_does_not_change_while_the_student_distils(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path / "ck", keep_last=10)
    spec = mfeat_spec({"name": "logit_kd", "teacher_epochs": 1}, epochs=2)
    train(spec, workdir=tmp_path, checkpoints=store)
    after_phase1 = ckpt.from_bytes((tmp_path / "ck" / "step-5.pt").read_bytes())["nets"]
    final = ckpt.from_bytes((tmp_path / "ck" / "step-15.pt").read_bytes())["nets"]
    teacher_keys = [k for k in final if k.startswith("teacher.")]
    student_keys = [k for k in final if k.startswith("student.")]
    assert all(torch.equal(after_phase1[k], final[k]) for k in teacher_keys)
    assert not all(torch.equal(after_phase1[k], final[k]) for k in student_keys)


def test_export_predicts_like_the_trained_student(tmp_path: Path) -> None:
    from core.data import prepare
    from core.engine.export import predict_file

    spec = mfeat_spec({"name": "student_only"})
    summary = train(spec, workdir=tmp_path)
    data = prepare(spec.dataset, spec.task)
    raw = np.load(Path(__file__).resolve().parents[2] / "core/data/builtin/mfeat.npz")
    rows = data.test.indices
    np.savez(tmp_path / "primary.npz", fou=raw["fou"][rows], mor=raw["mor"][rows])  # primary only
    result = predict_file(tmp_path / "student", tmp_path / "primary.npz")
    accuracy = float((result["prediction"] == raw["label"][rows]).mean())
    assert accuracy == pytest.approx(summary["student"]["accuracy"], abs=1e-9)
    assert result["scores"].shape == (400, 10) and np.allclose(result["scores"].sum(1), 1, atol=1e-5)


def test_resume_refuses_a_checkpoint_trained_on_other_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(60, 4)), "b": rng.normal(size=(60, 3)), "label": np.arange(60) % 3}
    np.savez(tmp_path / "d.npz", **arrays)
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"uri": str(tmp_path / "d.npz"), "primary": ["a"], "auxiliary": ["b"]},
            "model": TINY_MODEL,
            "method": {"name": "student_only"},
            "train": {"epochs": 1, "batch_size": 16},
        }
    )
    store = LocalCheckpointStore(tmp_path / "ck")
    train(spec, workdir=tmp_path / "run", checkpoints=store)
    np.savez(tmp_path / "d.npz", **{**arrays, "a": arrays["a"] + 1.0})  # same path, other contents
    with pytest.raises(MmkdError, match="trained on other data"):
        train(spec, workdir=tmp_path / "run", checkpoints=store)


def test_checkpoints_load_without_unpickling_code(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path / "ck")
    train(mfeat_spec({"name": "paper"}, epochs=1), workdir=tmp_path, checkpoints=store)
    payload = store.load_latest()[1]  # type: ignore[index]
    state = torch.load(__import__("io").BytesIO(payload), weights_only=True)  # raises on any pickled object
    assert {"nets", "optimizer", "disc_optimizer", "rng", "data_sha256"} <= set(state)


def test_amp_path_runs_the_paper_method_on_cpu(tmp_path: Path) -> None:
    """bfloat16 autocast (used on CUDA) through the main and the discriminator steps, on the CPU."""
    from core.data import prepare
    from core.engine.setup import build_run
    from core.engine.trainer import epoch_batches, make_batch, train_step

    spec = mfeat_spec({"name": "paper"})
    run = build_run(spec, prepare(spec.dataset, spec.task))
    run.amp = True
    losses = train_step(run, make_batch(run, epoch_batches(run, 0)[0]), 0)
    assert {"adv", "disc"} <= set(losses) and all(np.isfinite(list(losses.values())))


def test_evaluation_runs_in_float32_even_under_autocast() -> None:
    """The reported metrics are the exported (float32) student's: evaluation never autocasts to bf16."""
    from core.data import prepare
    from core.engine.setup import build_run
    from core.engine.trainer import evaluate

    spec = mfeat_spec({"name": "student_only"}, epochs=1)
    run = build_run(spec, prepare(spec.dataset, spec.task))
    plain = evaluate(run, "test")
    run.amp = True  # on CPU, torch.autocast would run these networks in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert evaluate(run, "test") == plain
    inputs = {name: torch.from_numpy(v) for name, v in run.data.test.modalities.items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = run.nets.student(inputs)[1]
    assert bf16.dtype == torch.bfloat16  # the probe: autocast would have changed the outputs


def _method_weights(store: LocalCheckpointStore) -> dict[str, torch.Tensor]:
    latest = store.load_latest()
    assert latest is not None
    return ckpt.from_bytes(latest[1])["objective"]


@pytest.mark.parametrize(
    ("method", "still"),
    [
        # All of warm-up: no distillation term runs, so no head and no discriminator moves.
        ({"name": "paper", "warmup_epochs": 2}, ("proj_", "generator", "discriminator")),
        ({"name": "mi_joint", "warmup_epochs": 2}, ("proj_",)),
        # gamma 0: G and D sit still (D must not train against an idle G) while the MI heads train.
        ({"name": "paper", "gamma": 0.0}, ("generator", "discriminator")),
    ],
)
def test_a_term_that_does_not_act_leaves_its_modules_untouched(
    method: dict[str, Any], still: tuple[str, ...], tmp_path: Path
) -> None:
    spec = mfeat_spec(method)
    store = LocalCheckpointStore(tmp_path / "ckpt")
    initial = {
        k: v.clone() for k, v in build_run(spec, prepare(spec.dataset, spec.task)).objective.state_dict().items()
    }
    recorder = Recorder()
    train(spec, workdir=tmp_path / "run", tracker=recorder, checkpoints=store)
    final = _method_weights(store)
    for key, value in initial.items():
        if key.startswith(still):
            assert torch.equal(final[key], value), f"{key} moved while its term was off"
        else:
            assert not torch.equal(final[key], value), f"{key} never trained"
    assert ("disc" in recorder.steps[-1]) is (method["name"] == "paper" and not set(still) & {"discriminator"})


def test_teacher_lr_scale_gives_the_teacher_its_own_learning_rate_under_the_same_schedule() -> None:
    spec = mfeat_spec({"name": "mi_joint", "teacher_lr_scale": 0.1}, lr=2e-3)
    run = build_run(spec, prepare(spec.dataset, spec.task))
    rates = {group["name"]: group["lr"] for group in run.optimizer.param_groups}
    assert rates["teacher"] == pytest.approx(2e-4)
    assert rates["student"] == rates["auxiliary"] == rates["method"] == pytest.approx(2e-3)
    run.optimizer.step()  # no gradients: moves nothing, but the scheduler expects a step first
    run.scheduler.step()  # the cosine factor applies to every group alike
    after = {group["name"]: group["lr"] for group in run.optimizer.param_groups}
    assert after["teacher"] / after["student"] == pytest.approx(0.1)
    assert (
        mfeat_spec({"name": "mi_joint"}).spec_hash()
        == mfeat_spec({"name": "mi_joint", "teacher_lr_scale": 1.0}).spec_hash()
    )
    assert spec.spec_hash() != mfeat_spec({"name": "mi_joint"}, lr=2e-3).spec_hash()
