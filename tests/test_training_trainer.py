"""The batched trainer: same steps as the one-bag-per-step loop, remainder stepped at the
end of the epoch, seeded, patch cap, cancellation, inner-validation selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari_ghanet.training.metrics import harrell_c_index
from napari_ghanet.training.trainer import (
    SurvivalData,
    TrainConfig,
    TrainingCancelled,
    baseline_hazards,
    fit,
    init_survival_bias,
    predict,
    train_epoch,
)

from napari_ghanet.models.baselines import build_model
from napari_ghanet.models.losses import nll_loss


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are small: one thread is as fast, and immune to oversubscribed CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


D = 8
SIZES = [2, 3, 2, 1, 2, 3]


def _data(n=14, seed=0, omics=True):
    rng = np.random.default_rng(seed)
    bags = [rng.normal(size=(int(rng.integers(3, 25)), D)).astype(np.float32) for _ in range(n)]
    risk = np.array([b[:, 0].mean() for b in bags])
    times = np.exp(-risk) * 20 * rng.uniform(0.5, 1.5, n)
    c = (rng.random(n) < 0.3).astype(np.int64)
    y = np.digitize(times, np.quantile(times, [0.25, 0.5, 0.75])).astype(np.int64)
    g = rng.normal(size=(n, sum(SIZES))).astype(np.float32)
    targets, k = [], 0
    for s in SIZES:
        targets.append(g[:, k : k + s])
        k += s
    return SurvivalData(ids=[f"p{i}" for i in range(n)], y=y, c=c, times=times,
                        omics=g if omics else None, targets=targets, bag=lambda i: bags[i])


def _ghanet(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return build_model("ghanet", omic_sizes=SIZES, input_dim=D, width=32, heads=2, dim_head=16,
                       gate_dim=8, compress_dim=8, ffn_mult=2, dropout=dropout)


class CountingAdam(torch.optim.Adam):
    steps = 0

    def step(self, closure=None):
        CountingAdam.steps += 1
        return super().step(closure)


def _collate_float64(collate):
    """The trainer's micro-batch collation with every float tensor in float64."""

    def wrapped(*args, **kwargs):
        batch = collate(*args, **kwargs)
        for key in ("x", "omics", "c"):
            if batch[key] is not None:
                batch[key] = batch[key].double()
        if batch["targets"] is not None:
            batch["targets"] = [t.double() for t in batch["targets"]]
        return batch

    return wrapped


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("name", ["ghanet", "abmil_snn"])
def test_batched_epoch_equals_one_bag_per_step(name, seed, monkeypatch):
    """Micro-batches of 5 padded bags take the same steps as one bag per step.

    Both paths run in float64 (model and inputs), so the comparison does not depend on
    float32 summation order: in float32 the two paths differ by up to 1.8e-4 on data
    seed 2 (measured), the size a real bug could hide in. In float64 the remaining
    difference is rounding, bounded by n x u x |w| with u = 1.1e-16, n < 1e4 operations
    per weight over the 8 steps and |w| < 10: below 1e-11 (measured: 7e-16); a wrong
    mean, padding that leaks into the attention or a skipped step moves weights by
    lr x |g| >= 1e-4.
    """
    import napari_ghanet.training.trainer as trainer

    monkeypatch.setattr(trainer, "_collate", _collate_float64(trainer._collate))
    data = _data(seed=seed)
    states = []
    for batch_size in (1, 5):
        if name == "ghanet":
            model = _ghanet()
        else:
            torch.manual_seed(0)
            model = build_model(name, input_dim=D, omic_dim=sum(SIZES), hidden=16, attn_dim=8,
                                omic_hidden=16, fusion_dim=16, dropout=0.0)
        model.double()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(accumulation=4, batch_size=batch_size, max_patches=10)
        # SGD: updates are linear in the gradients (Adam would blow float noise in
        # gradients that are zero in theory, e.g. the attention score's bias, up to lr).
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rng = np.random.default_rng(0)
        stats = train_epoch(model, data, opt, cfg, rng, torch.device("cpu"))
        stats2 = train_epoch(model, data, opt, cfg, rng, torch.device("cpu"))
        states.append((model.state_dict(), stats, stats2))
        assert all(v.dtype == torch.float64 for v in model.state_dict().values()
                   if v.is_floating_point())
    (a, sa, sa2), (b, sb, sb2) = states
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-2  # it did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-11, rtol=0)
    assert sa["train_loss"] == pytest.approx(sb["train_loss"], rel=1e-6)
    assert sa2["train_loss"] == pytest.approx(sb2["train_loss"], rel=1e-6)
    if name == "ghanet":
        assert {"train_nll", "train_sce", "train_mse"} <= set(sa)


def test_remainder_is_stepped_at_epoch_end():
    data = _data(n=10)
    model = _ghanet()
    opt = CountingAdam(model.parameters(), lr=1e-3)
    CountingAdam.steps = 0
    train_epoch(model, data, opt, TrainConfig(accumulation=4, batch_size=3), np.random.default_rng(0),
                torch.device("cpu"))
    assert CountingAdam.steps == 3  # 4 + 4 + the remaining 2
    assert all(p.grad is None for p in model.parameters())  # nothing carried over


def test_the_last_group_step_uses_its_own_mean():
    """A remainder of r bags steps with the mean of their gradients, like a full group."""
    data = _data(n=5)
    model = _ghanet()
    ref = _ghanet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = TrainConfig(accumulation=4, batch_size=4)
    rng = np.random.default_rng(3)
    order = np.random.default_rng(3).permutation(5)
    train_epoch(model, data, opt, cfg, rng, torch.device("cpu"))
    # By hand: group 1 = order[:4] then group 2 = order[4:], each the mean loss.
    from napari_ghanet.models.losses import ghanet_loss

    ref.train()
    ropt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for group in (order[:4], order[4:]):
        ropt.zero_grad()
        for i in group:
            out = ref(torch.from_numpy(data.bag(int(i)))[None])
            loss, _ = ghanet_loss(out.hazards, out.survival, out.reconstructed,
                                  [torch.from_numpy(t[[i]]) for t in data.targets],
                                  torch.tensor([data.y[i]]), torch.tensor([float(data.c[i])]))
            (loss / len(group)).backward()
        ropt.step()
    for (k, v), w in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(v, w, atol=2e-5, rtol=1e-4, msg=k)


def test_fit_is_seeded_and_repeatable():
    runs = []
    for _ in range(2):
        model = _ghanet(dropout=0.25, seed=1)
        cfg = TrainConfig(epochs=2, accumulation=4, batch_size=4, seed=5, max_patches=6)
        res = fit(model, _data(), cfg)
        runs.append((model.state_dict(), res.history))
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k])
    assert [r["train_loss"] for r in runs[0][1]] == [r["train_loss"] for r in runs[1][1]]
    assert runs[0][1][0]["epoch"] == 1 and runs[0][1][-1]["epochs"] == 2


def test_patch_cap_and_whole_bags_at_evaluation():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _ghanet()

        def forward(self, x, mask=None, omics=None):
            seen.append(int(mask.sum(1).max()))
            return self.inner(x, mask, omics)

    data = _data()
    model = Spy()
    fit(model, data, TrainConfig(epochs=1, accumulation=4, batch_size=4, max_patches=5))
    assert max(seen) == 5
    seen.clear()
    predict(model, data, TrainConfig(eval_max_tokens=30))
    assert max(seen) == max(len(data.bag(i)) for i in range(len(data)))


def test_snn_trains_on_genomics_only():
    data = _data(n=40)
    data.bag = None
    torch.manual_seed(0)
    model = build_model("snn", omic_dim=sum(SIZES), hidden=16)
    res = fit(model, data, TrainConfig(epochs=3, accumulation=8, lr=1e-3), monitor=data)
    assert len(res.history) == 3 and res.history[-1]["test_c_index"] is not None
    assert "train_sce" not in res.history[0]


def test_cancel_stops_training():
    with pytest.raises(TrainingCancelled):
        fit(_ghanet(), _data(), TrainConfig(epochs=2, accumulation=4), should_stop=lambda: True)


def test_inner_selection_restores_the_best_inner_epoch():
    train, inner = _data(n=24, seed=1), _data(n=12, seed=2)
    model = _ghanet(dropout=0.25)
    cfg = TrainConfig(epochs=4, accumulation=4, batch_size=4, lr=5e-3, selection="inner")
    res = fit(model, train, cfg, inner=inner)
    scores = [r["inner_c_index"] for r in res.history]
    assert res.selected_epoch == int(np.argmax(scores)) + 1
    p = predict(model, inner, cfg)
    assert harrell_c_index(inner.times, inner.c == 0, p["risk"]) == pytest.approx(max(scores))
    with pytest.raises(ValueError, match="inner validation"):
        fit(_ghanet(), train, cfg)


def test_survival_head_starts_at_the_cohort_hazards():
    """The initial bias is the covariate-free maximum of the NLL: zero gradient there."""
    data = _data(n=40, seed=4)
    torch.manual_seed(0)
    model = build_model("snn", omic_dim=sum(SIZES), hidden=16)
    assert init_survival_bias(model, data)
    h = baseline_hazards(data.y, data.c, 4)
    torch.testing.assert_close(torch.sigmoid(model.classifier.bias), torch.as_tensor(h, dtype=torch.float32))
    logits = model.classifier.bias.detach().clone().expand(40, 4).requires_grad_(True)
    hazards = torch.sigmoid(logits)
    loss = nll_loss(hazards, torch.cumprod(1 - hazards, 1), torch.from_numpy(data.y),
                    torch.from_numpy(data.c).float())
    loss.backward()
    assert float(logits.grad.sum(0).abs().max()) < 1e-5
    # Events over patients at risk per bin, by hand for bin 0.
    assert h[0] == pytest.approx(((data.y == 0) & (data.c == 0)).sum() / 40)
