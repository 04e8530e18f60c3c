"""deepgen.train.optim: weight-decay groups, LR schedules (hand values), state round-trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from deepgen.train.optim import (
    WarmupCosine,
    build_lr_scheduler,
    build_optimizer,
    build_param_groups,
    warmup_steps_for,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.meta_queries = nn.Parameter(torch.randn(4, 8))  # 2-D: decayed (official)
        self.proj = nn.Linear(8, 8)  # weight decayed, bias not
        self.norm = nn.LayerNorm(8)  # 1-D: not decayed
        self.scale = nn.Parameter(torch.ones(8))  # 1-D: not decayed
        self.conv = nn.Conv2d(2, 2, 3)  # 4-D weight decayed
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def _names(group):
    return set(group["param_names"])


def test_weight_decay_groups():
    opt = build_optimizer(Toy(), lr=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["group"] == "decay" and decay["weight_decay"] == 0.05
    assert no_decay["group"] == "no_decay" and no_decay["weight_decay"] == 0.0
    assert _names(decay) == {"meta_queries", "proj.weight", "conv.weight"}
    assert _names(no_decay) == {"proj.bias", "norm.weight", "norm.bias", "scale", "conv.bias"}
    assert decay["betas"] == (0.9, 0.95) and decay["lr"] == 1e-4
    assert not any(n.startswith("frozen") for g in opt.param_groups for n in g["param_names"])


def test_weight_decay_applies_only_to_matrices():
    m = Toy()
    opt = build_optimizer(m, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # decoupled decay with zero gradient: p ← p·(1 − lr·wd) = 0.95·p for ndim ≥ 2, unchanged otherwise
    torch.testing.assert_close(m.meta_queries.detach(), before["meta_queries"] * 0.95)
    torch.testing.assert_close(m.proj.weight.detach(), before["proj.weight"] * 0.95)
    assert torch.equal(m.proj.bias.detach(), before["proj.bias"])
    assert torch.equal(m.scale.detach(), before["scale"])


def test_param_group_errors():
    p = nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match="twice"):
        build_param_groups([("a", p), ("b", p)])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_param_groups(frozen)
    with pytest.raises(ValueError):
        build_optimizer({"a": p}, lr=0.0)
    with pytest.raises(ValueError):
        build_optimizer({"a": p}, lr=1e-4, betas=(0.9, 1.0))
    groups = build_param_groups({"a": p})  # a dict works, empty groups are dropped
    assert len(groups) == 1 and groups[0]["group"] == "decay"


def test_warmup_steps_like_mmengine():
    assert warmup_steps_for(200_000, 0.01) == 2000  # official stage 1 (micro-iterations)
    assert warmup_steps_for(400_000, 0.01) == 4000  # official stage 2
    assert warmup_steps_for(133_333, 0.01) == 1333
    with pytest.raises(ValueError):
        warmup_steps_for(100, 1.0)


def _lrs(max_steps, warmup_ratio, n, lr=1e-4, **kw):
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=lr)
    sched = build_lr_scheduler(opt, max_steps=max_steps, warmup_ratio=warmup_ratio, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_hand_values():
    # max_steps 410, warmup int(0.025 · 410) = 10, cosine over the remaining 400 steps
    lrs = _lrs(410, 0.025, 412)
    base = 1e-4
    assert lrs[0] == pytest.approx(base * 1e-5, rel=1e-12)  # warm-up start: lr · 1e-5
    assert lrs[5] == pytest.approx(base * (1e-5 + (1 - 1e-5) * 0.5), rel=1e-12)  # half-way: 0.500005 · lr
    assert lrs[10] == pytest.approx(base, rel=1e-12)  # warm-up end: full lr
    assert lrs[110] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)  # 0.853553 · lr
    assert lrs[210] == pytest.approx(base * 0.5, rel=1e-12)  # mid-cosine
    assert lrs[310] == pytest.approx(base * 0.14644660940672624, rel=1e-9)  # 0.5·(1 − cos(π/4))
    assert lrs[410] == 0.0 and lrs[411] == 0.0  # end and after
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))  # rising warm-up
    assert all(a >= b for a, b in zip(lrs[10:410], lrs[11:411]))  # falling cosine


def test_cosine_equals_torch_linear_then_cosine():
    p = nn.Parameter(torch.zeros(1))
    o1 = torch.optim.SGD([p], lr=1e-4)
    o2 = torch.optim.SGD([p], lr=1e-4)
    ours = build_lr_scheduler(o1, max_steps=300, warmup_ratio=0.1)
    theirs = torch.optim.lr_scheduler.SequentialLR(
        o2,
        [
            torch.optim.lr_scheduler.LinearLR(o2, start_factor=1e-5, end_factor=1.0, total_iters=30),
            torch.optim.lr_scheduler.CosineAnnealingLR(o2, T_max=270, eta_min=0.0),
        ],
        milestones=[30],
    )
    for _ in range(300):
        assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], rel=1e-6, abs=1e-15)
        o1.step(), o2.step()
        ours.step(), theirs.step()


def test_constant_schedule_with_warmup():
    lrs = _lrs(None, 0.0, 30, lr=2e-6, schedule="constant", warmup_steps=20)
    assert lrs[0] == pytest.approx(2e-6 / 20, rel=1e-12)  # (s + 1) / W: the first update does not run at lr 0
    assert lrs[9] == pytest.approx(1e-6, rel=1e-12)
    assert lrs[18] == pytest.approx(2e-6 * 19 / 20, rel=1e-12)
    assert lrs[19:] == [pytest.approx(2e-6, rel=1e-12)] * 11  # the 20th update is the first at full lr
    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))
    lrs = _lrs(None, 0.0, 3, schedule="constant", warmup_steps=0)
    assert lrs == [pytest.approx(1e-4)] * 3


def test_schedule_errors():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="max_steps"):
        build_lr_scheduler(opt)
    with pytest.raises(ValueError, match="schedule"):
        build_lr_scheduler(opt, schedule="linear", max_steps=10)
    with pytest.raises(ValueError):
        WarmupCosine(max_steps=10, warmup_steps=10)


def test_optimizer_and_schedule_state_round_trip_weights_only():
    torch.manual_seed(0)
    data = [torch.randn(4, 8) for _ in range(10)]

    def make():
        torch.manual_seed(1)
        m = Toy()
        opt = build_optimizer(m, lr=1e-2)
        return m, opt, build_lr_scheduler(opt, max_steps=10, warmup_ratio=0.2)

    def step(m, opt, sched, x):
        loss = (m.norm(m.proj(x)) @ m.meta_queries.T).pow(2).mean() + m.scale.sum()
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad()

    m1, o1, s1 = make()
    for x in data[:4]:
        step(m1, o1, s1, x)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "sched": s1.state_dict()}, buf)
    for x in data[4:]:
        step(m1, o1, s1, x)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2, o2, s2 = make()
    m2.load_state_dict(saved["model"])
    o2.load_state_dict(saved["opt"])
    s2.load_state_dict(saved["sched"])
    assert s2.last_epoch == 4
    for x in data[4:]:
        step(m2, o2, s2, x)
    for (n, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"]


def test_resume_continues_on_a_changed_schedule():
    """A resumed run whose max_steps / lr changed continues on the new schedule from the checkpoint's step (the
    trainer's _keep_new_schedule, through the scheduler's public state_dict / step)."""
    import warnings

    from deepgen.train.trainer import _keep_new_schedule

    def run(lr, max_steps):
        opt = build_optimizer(Toy().named_parameters(), lr=lr)
        return opt, build_lr_scheduler(opt, schedule="cosine", max_steps=max_steps, warmup_steps=2)

    old_opt, old = run(1e-3, 10)
    for _ in range(5):
        old_opt.step()
        old.step()
    opt, sched = run(4e-3, 20)
    fresh = ([dict(fn.__dict__) for fn in sched.lr_lambdas], list(sched.base_lrs))
    opt.load_state_dict(old_opt.state_dict())
    sched.load_state_dict(old.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _keep_new_schedule(sched, opt, fresh, 5)
    assert [str(w.message) for w in caught] == [
        "the learning-rate schedule differs from the checkpoint's "
        "(max_steps, lr or warm-up changed); continuing on the new schedule"
    ]
    want = [base * sched.lr_lambdas[0](5) for base in fresh[1]]
    assert sched.get_last_lr() == pytest.approx(want) and [g["lr"] for g in opt.param_groups] == pytest.approx(want)
    assert sched.last_epoch == 5 and sched.lr_lambdas[0].max_steps == 20
    opt.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([base * sched.lr_lambdas[0](6) for base in fresh[1]])
