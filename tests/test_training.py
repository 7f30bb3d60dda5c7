"""The training loop's parts: learning-rate schedules, random states, clipping, the non-finite
guard, resuming the loop from a collected state, logged figures and the progress bar."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch

from melecole import rng_state
from melecole.data.sampling import PatchSampler
from melecole.losses import EmbeddingLoss, MultitaskLoss
from melecole.models import build_model
from melecole.progress import MetricBuffer, ProgressBar
from melecole.resume import TrainingParts, collect, restore
from melecole.schedule import build_scheduler, lr_factor
from melecole.stages.train import amp_dtype
from melecole.training import NonFiniteLoss, StepOptions, make_ema, train_loop
from tests.conftest import blocks_volume

CPU = torch.device("cpu")


def test_warm_up_then_constant():
    assert [lr_factor(s, "constant", 10, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_factor(s, "constant", 10) for s in (0, 9)] == [1.0, 1.0]


def test_cosine_falls_from_one_to_the_floor_after_the_warm_up():
    factors = [lr_factor(s, "cosine", 12, warmup_steps=2, min_factor=0.1) for s in range(12)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[7] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the 10 cosine steps
    assert factors[11] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))


def test_cosine_restarts_jump_back_and_lengthen():
    factors = [lr_factor(s, "cosine_restarts", 100, restart_steps=4, restart_mult=2) for s in range(14)]
    assert [factors[s] for s in (0, 4, 12)] == [1.0, 1.0, 1.0]  # cycles of 4, then 8 steps
    assert factors[2] == pytest.approx(0.5) and factors[8] == pytest.approx(0.5)
    assert factors[3] < factors[2] and factors[11] < factors[10]
    assert lr_factor(3, "cosine_restarts", 8, restart_steps=0) == pytest.approx(lr_factor(3, "cosine", 8))


def test_scheduler_sets_the_optimizer_rate_each_step():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2)
    scheduler = build_scheduler(optimizer, "cosine", 6, warmup_steps=2)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.2 * lr_factor(s, "cosine", 6, warmup_steps=2) for s in range(6)])
    assert scheduler.state_dict()["last_epoch"] == 6


def test_random_states_survive_weights_only_loading(tmp_path):
    generator = np.random.default_rng(7)
    generator.random(5)
    saved = rng_state.capture(generator)
    torch.save(saved, tmp_path / "rng.pt")
    expected = (random.random(), np.random.random(), torch.rand(2), generator.normal(size=3))
    rng_state.restore(torch.load(tmp_path / "rng.pt", weights_only=True), generator)
    again = (random.random(), np.random.random(), torch.rand(2), generator.normal(size=3))
    assert again[0] == expected[0] and again[1] == expected[1]
    assert torch.equal(again[2], expected[2]) and np.array_equal(again[3], expected[3])


def test_mixed_precision_is_off_on_the_cpu():
    assert {amp_dtype(setting, CPU) for setting in ("auto", "bf16", "fp16", "off")} == {None}


def _sampler(seed: int = 3) -> PatchSampler:
    raw, labels = blocks_volume(shape=(24, 24, 24))
    return PatchSampler([((raw.astype(np.float32) - 128) / 64, labels)], (16, 16, 16), np.random.default_rng(seed),
                        min_labelled=0.0)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet3d", base_channels=4, embedding_dim=4, downsample=[[2, 2, 2]])


def _parts(model, sampler) -> TrainingParts:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, "cosine_restarts", 6, warmup_steps=2, restart_steps=2)
    return TrainingParts(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), sampler.rng,
                         make_ema(model, 0.5))


def _loop(parts, sampler, steps, state=None, on_checkpoint=None, on_log=None):
    options = StepOptions(scheduler=parts.scheduler, scaler=parts.scaler, checkpoint_every=2)
    return train_loop(parts.model, MultitaskLoss(EmbeddingLoss()), sampler, parts.optimizer, steps, 1, CPU,
                      log_every=3, val_every=100, ema=parts.ema, options=options, state=state,
                      on_checkpoint=on_checkpoint, on_log=on_log)


def test_the_loop_continues_exactly_from_a_collected_state(tmp_path):
    sampler = _sampler()
    straight = _parts(_model(), sampler)
    _loop(straight, sampler, 6)

    first_sampler = _sampler()
    first = _parts(_model(), first_sampler)
    saved = {}

    def keep(step, result):
        if step == 4:
            state = collect(first, result, {}, [rng_state.capture(first_sampler.rng)], {})
            torch.save(state, tmp_path / "state.pt")
            saved["done"] = True

    _loop(first, first_sampler, 6, on_checkpoint=keep)
    assert saved
    # A new process: fresh model, optimiser and sampler, then the state of step 4.
    torch.manual_seed(123)
    second_sampler = _sampler(seed=99)
    second = _parts(_model(), second_sampler)
    state = restore(second, torch.load(tmp_path / "state.pt", weights_only=True), rank=0)
    assert state.step == 4 and state.running_count == 1  # logged at 3, one step since
    _loop(second, second_sampler, 6, state=state)
    for name, parts in (("model", second.model), ("ema", second.ema)):
        reference = (straight.model if name == "model" else straight.ema).state_dict()
        assert all(torch.equal(reference[k], v) for k, v in parts.state_dict().items()), name


def test_logged_figures_and_gradient_clipping():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    logged = []
    clip, lr = 1e-3, 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_loop(model, MultitaskLoss(EmbeddingLoss()), _sampler(), optimizer, 1, 1, CPU, log_every=1, val_every=10,
               on_log=lambda figures, step: logged.append((step, figures)), options=StepOptions(clip_grad_norm=clip))
    (step, figures), = logged
    assert step == 1
    assert {"train_loss", "train_intra", "train_boundary", "train_grad_norm", "lr", "patches_per_second"} <= set(figures)
    assert figures["lr"] == lr and figures["train_grad_norm"] > clip * 10
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(moved) == pytest.approx(lr * clip, rel=1e-3)  # one SGD step of a clipped gradient


def test_a_non_finite_loss_names_the_step_and_steps_nothing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def loss_fn(outputs, batch):
        calls.append(1)
        loss = outputs["embedding"].mean() * (math.nan if len(calls) == 2 else 1.0)
        return {"loss": loss, "intra": loss.detach()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: step 1 leaves the weights as they were
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 2 \(loss=nan, intra=nan\)") as caught:
        train_loop(model, loss_fn, _sampler(), optimizer, 5, 1, CPU, log_every=1, val_every=10)
    assert caught.value.step == 2 and tuple(caught.value.raw.shape) == (1, 1, 16, 16, 16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_metric_buffer_sends_on_flush_and_keeps_what_failed():
    sent = []
    buffer = MetricBuffer(lambda metrics, step: sent.append((step, dict(metrics))))
    buffer({"a": 1.0}, 1)
    buffer({"a": 2.0}, 2)
    assert sent == []
    buffer.flush()
    assert sent == [(1, {"a": 1.0}), (2, {"a": 2.0})] and buffer.pending == []

    def broken(metrics, step):
        raise OSError("store down")

    failing = MetricBuffer(broken)
    failing({"a": 3.0}, 3)
    with pytest.raises(OSError):
        failing.flush()
    assert failing.pending == [({"a": 3.0}, 3)]


def test_progress_bar_shows_step_loss_and_rate():
    stream = io.StringIO()
    bar = ProgressBar(10, initial=2, stream=stream)
    bar(3, None)
    bar(4, {"train_loss": 0.125, "patches_per_second": 3.5})
    bar.close()
    text = stream.getvalue()
    assert "4/10" in text and "loss=0.1250" in text and "patches_s=3.50" in text
    silent = io.StringIO()
    quiet = ProgressBar(10, enabled=False, stream=silent)
    quiet(1, {"train_loss": 1.0, "patches_per_second": 1.0})
    quiet.close()
    assert silent.getvalue() == ""


@pytest.mark.parametrize("with_ema", [False, True], ids=["weights", "ema"])
def test_the_kept_weights_are_those_of_the_validation_with_the_lowest_vi_sum(with_ema):
    # Scripted validation VI sums: the best (0.7, at step 4) is neither the first nor the last.
    scripted = {2: (1.5, 0.5), 4: (0.4, 0.3), 6: (0.6, 0.6), 8: (0.5, 0.4)}
    model = _model()
    ema = make_ema(model, 0.5) if with_ema else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    validated, kept, steps = {}, {}, []

    def validate(evaluated):
        step = len(validated) * 2 + 2
        validated[step] = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
        split, merge = scripted[step]
        return {"vi_split": split, "vi_merge": merge}

    def on_best(step, metrics, evaluated):
        steps.append(step)
        kept.clear()
        kept.update({k: v.detach().clone() for k, v in evaluated.state_dict().items()})

    result = train_loop(model, MultitaskLoss(EmbeddingLoss()), _sampler(), optimizer, 8, 1, CPU, log_every=100,
                        val_every=2, validate=validate, on_best=on_best, ema=ema)

    assert sorted(validated) == [2, 4, 6, 8] and [v["step"] for v in result.validations] == [2, 4, 6, 8]
    assert result.best_step == 4 and result.best_score == pytest.approx(0.7)
    assert steps == [2, 4]  # called on every improvement, never after a worse validation
    assert all(torch.equal(kept[k], validated[4][k]) for k in kept)
    # The weights moved after step 4: keeping the last ones instead would show.
    assert not all(torch.equal(kept[k], validated[8][k]) for k in kept)
    if with_ema:
        # What is validated and kept is the moving average, not the raw weights.
        assert not all(torch.equal(validated[8][k], v) for k, v in model.state_dict().items())
