"""Many fits in the same steps (stacked.py, training.fit_heads): each stacked fit is the fit it would be alone,
the stacked Adam is torch's Adam per model, and a head's fits do not depend on the other candidates."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mmser.features import Features
from mmser.parallel import FORK
from mmser.stacked import StackedAdam
from mmser.training import Job, fit_head, fit_heads, make_fabric

CLASSES = ["ang", "hap", "sad", "neu"]
NO_DROPOUT = dict(text_proj_dim=16, hidden_dim=8, dropout=0.0, lr=1e-2, step_size=3, gamma=0.5)


def _features(n: int = 90) -> Features:
    rng = np.random.default_rng(3)
    y = np.arange(n) % 4
    text = (rng.normal(size=(n, 10)) + np.eye(4)[y] @ rng.normal(size=(4, 10))).astype(np.float32)
    audio = (rng.normal(size=(n, 5)) * 20 + 7).astype(np.float32)
    return Features([f"u{i:03d}" for i in range(n)], [CLASSES[i] for i in y], CLASSES, text, audio)


def _jobs(ids: list[str]) -> list[Job]:
    """Fits that differ in everything stacking has to keep apart: head, weight decay, training-part size (so
    steps per epoch), validation part, epochs and early stopping, and one refit without validation."""
    return [Job("server", 0.0, ids[:50], ids[50:70], epochs=7, early_stopping=2),
            Job("server", 0.3, ids[10:43], ids[70:], epochs=7, early_stopping=0),
            Job("gated", 0.0, ids[:61], ids[61:80], epochs=5, early_stopping=1),
            Job("linear", 0.1, ids[5:80], ids[80:], epochs=6, early_stopping=3),
            Job("late", 0.0, ids[:77], [], epochs=4)]


OPTIONS = dict(modality="fusion", classes=CLASSES, seed=11, head_kwargs=NO_DROPOUT, batch_size=8, standardize=True,
               class_weights=True)


def test_each_stacked_fit_is_the_fit_it_would_be_alone() -> None:
    features, fabric = _features(), make_fabric()
    jobs = _jobs(features.ids)
    stacked = fit_heads(fabric, features, jobs, **OPTIONS)
    for job, fit in zip(jobs, stacked):
        alone = fit_head(fabric, features, train_ids=job.train_ids, val_ids=job.val_ids, head=job.head,
                         weight_decay=job.weight_decay, epochs=job.epochs, early_stopping=job.early_stopping,
                         **{k: v for k, v in OPTIONS.items()})
        assert fit.best_epoch == alone.best_epoch and len(fit.history) == len(alone.history)
        for a, b in zip(fit.history, alone.history):
            assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in a)
        mine, theirs = fit.model.state_dict(), alone.model.state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.allclose(mine[k], theirs[k], rtol=1e-4, atol=1e-5) for k in mine), job
    # Early stopping ended the first fit before its 7 epochs (patience 2), and the refit ran exactly 4.
    assert len(stacked[0].history) < 7 and len(stacked[4].history) == 4 and stacked[4].best_val_ua is None


def test_a_heads_fits_do_not_depend_on_the_other_candidates() -> None:
    features, fabric = _features(), make_fabric()
    jobs = _jobs(features.ids)
    options = {**OPTIONS, "head_kwargs": {**NO_DROPOUT, "dropout": 0.5}}  # dropout draws included
    everything = fit_heads(fabric, features, jobs, **options)
    servers_only = fit_heads(fabric, features, jobs[:2], **options)
    for a, b in zip(everything[:2], servers_only):
        assert a.history == b.history
        assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())


def test_stacked_adam_steps_each_model_as_torch_adam_and_leaves_inactive_ones_alone() -> None:
    torch.manual_seed(0)
    start = torch.randn(3, 4, 5)
    stacked = torch.nn.Parameter(start.clone())
    optimizer = StackedAdam([([stacked], [0.0, 0.2, 0.0])], lr=0.05)
    alone = [torch.nn.Parameter(start[m].clone()) for m in range(3)]
    adams = [torch.optim.Adam([p], lr=0.05, weight_decay=wd) for p, wd in zip(alone, [0.0, 0.2, 0.0])]
    for step in range(6):
        target = torch.randn(3, 4, 5)
        active = torch.tensor([True, True, step % 2 == 0])  # model 2 sits out every other step
        optimizer.param_groups[0]["active"] = active
        optimizer.zero_grad()
        ((stacked - target) ** 2).sum().backward()
        optimizer.step()
        for m in range(3):
            if active[m]:
                adams[m].zero_grad()
                ((alone[m] - target[m]) ** 2).sum().backward()
                adams[m].step()
    for m in range(3):
        assert torch.allclose(stacked[m], alone[m], atol=1e-6)
    assert float(optimizer.state[stacked]["step"][2]) == 3.0


def test_default_training_and_prediction_never_import_lightning(tmp_path) -> None:
    # One CPU process trains without Lightning (its import costs seconds per stage); a model loads without it.
    code = f"""
import sys
sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from test_stacked import OPTIONS, _features
from mmser.models.module import EmotionClassifier
from mmser.training import fit_head, make_fabric, save_model
features = _features()
fit = fit_head(make_fabric(), features, train_ids=features.ids[:60], val_ids=features.ids[60:], head="server",
               weight_decay=0.0, epochs=2, early_stopping=0, **OPTIONS)
save_model(fit.model, {str(tmp_path / 'model.ckpt')!r})
EmotionClassifier.load_from_checkpoint({str(tmp_path / 'model.ckpt')!r})
print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_checkpoint_lightning_wrote_still_loads(tmp_path) -> None:
    from mmser.models.module import EmotionClassifier

    model = EmotionClassifier(text_dim=4, audio_dim=3, classes=CLASSES, **NO_DROPOUT)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.6.6", "epoch": 3}, tmp_path / "old.ckpt")
    loaded = EmotionClassifier.load_from_checkpoint(tmp_path / "old.ckpt")
    x, a = torch.randn(2, 4), torch.randn(2, 3)
    assert np.array_equal(loaded.predict_proba(x, a), model.predict_proba(x, a))


def test_the_learning_rate_is_multiplied_by_gamma_every_step_size_epochs() -> None:
    """StepLR's schedule: with gamma 0 after 2 epochs, epochs 3-5 cannot move the weights; with gamma 1 they do."""
    features, fabric = _features(), make_fabric()

    def refit(epochs: int, gamma: float) -> dict:
        options = {**OPTIONS, "head_kwargs": {**NO_DROPOUT, "step_size": 2, "gamma": gamma}}
        job = Job("server", 0.0, features.ids[:60], [], epochs=epochs)
        return fit_heads(fabric, features, [job], **options)[0].model.state_dict()

    two, five = refit(2, 0.0), refit(5, 0.0)
    assert all(torch.equal(two[k], five[k]) for k in two)
    two, five = refit(2, 1.0), refit(5, 1.0)
    assert not all(torch.equal(two[k], five[k]) for k in two)


def test_a_stacked_forward_leaves_no_tensor_in_the_template_module() -> None:
    """The stacked tensors are swapped into the (meta) template module for a call and swapped out after it."""
    from mmser.stacked import StackedHeads

    torch.manual_seed(0)
    heads = StackedHeads([torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)) for _ in range(2)])
    out = heads(torch.randn(2, 4, 3))
    assert out.shape == (2, 4, 2)
    template = heads._base.state_dict()
    assert template and all(t.is_meta for t in template.values())


@pytest.mark.skipif(not FORK, reason="head groups are shared out among forked processes on Linux only")
def test_the_fits_are_the_same_bit_for_bit_in_one_process_or_several() -> None:
    features, fabric = _features(), make_fabric()
    jobs = _jobs(features.ids)
    options = {**OPTIONS, "head_kwargs": {**NO_DROPOUT, "dropout": 0.5}}
    alone = fit_heads(fabric, features, jobs, **options, processes=1)
    for processes in (2, 3):
        shared = fit_heads(fabric, features, jobs, **options, processes=processes)
        for a, b in zip(alone, shared):
            assert a.history == b.history and a.best_epoch == b.best_epoch
            assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
