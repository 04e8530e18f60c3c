"""MR-GRPO math core against hand-computed values (derivations in the comments).

Reference: /work/shared/docs/mrgrpo-reference.md (§1.2 CPS, §1.3 log-prob, §1.4 trained steps, §3 GDPO,
§4 losses); docs/mrgrpo.md.
"""

import math
import random
import warnings

import pytest
import torch

from deepgen.train.grpo import (
    DegenerateGroupWarning,
    GRPOConfig,
    clipped_surrogate,
    cps_logprob,
    cps_sde_step,
    euler_step,
    flow_matching_loss,
    flow_sigmas,
    gaussian_logprob,
    gdpo_advantages,
    grpo_step_loss,
    importance_ratio,
    loss_scale,
    mix_sft_loss,
    num_train_steps,
    per_sample_weights,
    round_old_logprob,
    select_train_steps,
    simplified_logprob,
    step_logprob,
    train_sigmas,
    velocity_kl,
)
from deepgen.train.losses import noisy_latents


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a.tolist(), b.tolist())


# ------------------------------------------------------------------------------------------------
# CPS SDE step.  Shared hand example: x_t = [1, -2], v = [0.5, 1], σ = 0.5, σ' = 0.25
#   x̂0 = x − σv = [0.75, −2.5];  x̂1 = x + (1−σ)v = [1.25, −1.5]

X = torch.tensor([[1.0, -2.0]])
V = torch.tensor([[0.5, 1.0]])
Z = torch.tensor([[1.0, -2.0]])


def test_cps_eta1_predicts_x0_and_fully_renoises():
    # η = 1: s = σ' = 0.25, sqrt(σ'² − s²) = 0 → μ = (1 − σ')·x̂0 = 0.75·[0.75, −2.5] = [0.5625, −1.875]
    # x' = μ + 0.25·[1, −2] = [0.8125, −2.375]
    out = cps_sde_step(X, V, 0.5, 0.25, eta=1.0, noise=Z)
    close(out.mean, [[0.5625, -1.875]])
    close(out.std, 0.25)
    close(out.next_latent, [[0.8125, -2.375]])


def test_cps_intermediate_eta():
    # η = 1/3: sin(π/6) = 0.5 → s = 0.125; sqrt(0.0625 − 0.015625) = sqrt(0.046875) = 0.21650635
    # μ = 0.75·[0.75, −2.5] + 0.21650635·[1.25, −1.5] = [0.5625 + 0.27063294, −1.875 − 0.32475953]
    out = cps_sde_step(X, V, 0.5, 0.25, eta=1 / 3, noise=Z)
    close(out.std, 0.125)
    close(out.mean, [[0.83313294, -2.19975953]])
    close(out.next_latent, [[0.83313294 + 0.125, -2.19975953 - 0.25]])


def test_cps_eta0_is_deterministic_ddim_equals_euler():
    # η = 0: s = 0, μ = 0.75·x̂0 + 0.25·x̂1 = [0.5625 + 0.3125, −1.875 − 0.375] = [0.875, −2.25]
    # Euler: x + (σ' − σ)·v = [1 − 0.125, −2 − 0.25] = [0.875, −2.25]
    out = cps_sde_step(X, V, 0.5, 0.25, eta=0.0, noise=Z)  # noise ignored since s = 0
    close(out.std, 0.0)
    close(out.mean, [[0.875, -2.25]])
    close(out.next_latent, [[0.875, -2.25]])
    close(euler_step(X, V, 0.5, 0.25), [[0.875, -2.25]])


@pytest.mark.parametrize("eta", [1.0, 0.8, 0.5, 0.0])
def test_cps_preserves_marginal_noise_level(eta):
    # On the marginal x_σ = (1−σ)x0 + σε with the exact velocity v = ε − x0, x̂0 = x0 and x̂1 = ε, so
    # x' = (1−σ')·x0 + sqrt(σ'²−s²)·ε + s·z. The map is linear in (x0, ε, z); probe the coefficients
    # with unit vectors: coef(x0) = 1 − σ' and coef(ε)² + coef(z)² = σ'² (noise level exactly σ').
    sigma, sigma_next = 0.7, 0.4
    e0, e1, e2 = torch.eye(3)
    x0 = e0[None]
    eps = e1[None]
    z = e2[None]
    x_t = (1 - sigma) * x0 + sigma * eps
    v = eps - x0
    out = cps_sde_step(x_t, v, sigma, sigma_next, eta=eta, noise=z)
    c_x0, c_eps, c_z = out.next_latent[0].tolist()
    s = sigma_next * math.sin(eta * math.pi / 2)
    assert c_x0 == pytest.approx(1 - sigma_next, abs=1e-6)
    assert c_z == pytest.approx(s, abs=1e-6)
    assert c_eps**2 + c_z**2 == pytest.approx(sigma_next**2, abs=1e-6)


def test_cps_per_sample_sigma_and_dtype():
    # per-sample σ (B,) broadcasts; next latent keeps the input dtype, mean/std are fp32
    x = torch.zeros(2, 1, 2, 2, dtype=torch.bfloat16)
    v = torch.ones(2, 1, 2, 2, dtype=torch.bfloat16)
    out = cps_sde_step(
        x, v, torch.tensor([0.5, 1.0]), torch.tensor([0.25, 0.5]), eta=1.0, noise=torch.zeros(2, 1, 2, 2)
    )
    # sample 0: x̂0 = −0.5, μ = 0.75·(−0.5) = −0.375; sample 1: x̂0 = −1, μ = 0.5·(−1) = −0.5
    assert out.next_latent.dtype == torch.bfloat16 and out.mean.dtype == torch.float32
    close(out.mean[:, 0, 0, 0], [-0.375, -0.5])
    close(out.std.reshape(-1), [0.25, 0.5])


def test_cps_last_step_returns_x0_hat():
    # σ' = 0 → s = 0 and x' = x̂0 = x − σv = [0.75, −2.5] (any η)
    out = cps_sde_step(X, V, 0.5, 0.0, eta=1.0)
    close(out.next_latent, [[0.75, -2.5]])


def test_cps_seeded_noise_is_reproducible():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = cps_sde_step(torch.zeros(1, 4), torch.zeros(1, 4), 0.5, 0.25, generator=g1).next_latent
    b = cps_sde_step(torch.zeros(1, 4), torch.zeros(1, 4), 0.5, 0.25, generator=g2).next_latent
    assert torch.equal(a, b)
    # x_t = v = 0 → x' = s·z = 0.25·z
    close(a, 0.25 * torch.randn(1, 4, generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------------------------
# σ grid and trained steps


def test_flow_sigmas_hand_values_and_diffusers():
    s = flow_sigmas(50, 3.0)
    assert s.shape == (51,)
    # σ_min = 3·0.001/(1 + 2·0.001) = 0.00299401; shifted again: 3·σ_min/(1 + 2·σ_min) = 0.00892857…
    # second value: t = 1 − (1 − σ_min)/49 = 0.97965294 → 3t/(1+2t) = 0.99312…
    close(s[[0, 1, 2, 49, 50]], [1.0, 0.9931244, 0.9860571, 0.0089286, 0.0], tol=2e-6)
    close(s[[-6, -5, -4, -3, -2]], [0.2166, 0.1703, 0.1205, 0.0669, 0.0089], tol=6e-5)  # reference §1.1
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(50)
    close(s, sch.sigmas, tol=1e-6)
    # training σ table: ascending index = descending σ; first = 1, last = shift(1/1000) = 0.00299401
    ts = train_sigmas()
    close(ts[[0, -1]], [1.0, 0.0029940], tol=1e-7)
    close(ts, sch.__class__(shift=3.0).sigmas, tol=1e-6)


def test_select_train_steps():
    assert num_train_steps(50, 0.6) == 30  # int(50·0.6)
    assert num_train_steps(4, 0.6) == 2  # int(2.4)
    assert num_train_steps(50, 1.0) == 49  # capped at the pool {0..48}
    assert num_train_steps(50, 1.0, include_last=True) == 50
    steps = select_train_steps(50, 0.6, rng=123)
    assert len(steps) == 30 and steps == sorted(set(steps)) and max(steps) <= 48 and min(steps) >= 0
    assert steps == select_train_steps(50, 0.6, rng=random.Random(123))  # seeded → reproducible
    assert steps == sorted(random.Random(123).sample(range(49), 30))  # uniform w/o replacement from 0..48
    assert select_train_steps(4, 0.6, rng=0) in ([0, 1], [0, 2], [1, 2])
    assert select_train_steps(3, 1.0, rng=0) == [0, 1]  # everything except the σ'=0 step
    assert select_train_steps(3, 1.0, include_last=True, rng=0) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------
# log-probabilities


def test_simplified_logprob_hand_value():
    # x' − μ = [0.8125 − 0.5625, −2.375 + 1.875] = [0.25, −0.5]; mean of squares = (0.0625 + 0.25)/2
    lp = simplified_logprob(torch.tensor([[0.8125, -2.375]]), torch.tensor([[0.5625, -1.875]]))
    close(lp, [-0.15625])


def test_exact_gaussian_logprob_hand_value():
    # s = 0.25: per element −d²/(2s²) − log s − ½log 2π; d²/(2s²) = [0.5, 2] → mean 1.25
    # −1.25 + log 4 − ½·log(2π) = −1.25 + 1.38629436 − 0.91893853 = −0.78264417
    x1, mu = torch.tensor([[0.8125, -2.375]]), torch.tensor([[0.5625, -1.875]])
    close(gaussian_logprob(x1, mu, 0.25), [-0.78264417], tol=1e-5)
    close(step_logprob(x1, mu, 0.25, "exact"), [-0.78264417], tol=1e-5)
    close(gaussian_logprob(x1, mu, 0.25, reduce="sum"), [-1.56528834], tol=2e-5)
    # simplified Δlogp = 2s²·(exact Δlogp): move x' to μ (d = 0): simplified 0, exact +0.46735583
    d_simpl = simplified_logprob(mu, mu) - simplified_logprob(x1, mu)  # 0.15625
    d_exact = gaussian_logprob(mu, mu, 0.25) - gaussian_logprob(x1, mu, 0.25)  # 1.25
    close(d_simpl, [0.15625])
    close(d_exact, [1.25], tol=1e-5)
    close(d_simpl, 2 * 0.25**2 * d_exact, tol=1e-6)


def test_cps_logprob_recompute_ratio_exactly_one():
    # same weights, same stored transition → logp identical → ratio exactly 1 (fp32 old log-probs)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 2, generator=g).bfloat16()
    v = torch.randn(3, 4, 2, 2, generator=g).bfloat16()
    step = cps_sde_step(x, v, 0.8, 0.6, eta=1.0, generator=g)
    old = simplified_logprob(step.next_latent, step.mean)
    new = cps_logprob(x, v, 0.8, 0.6, step.next_latent, eta=1.0)
    assert torch.equal(importance_ratio(new, round_old_logprob(old)), torch.ones(3))


def test_bf16_old_logprob_quirk():
    # −0.99 in bf16 (spacing 2⁻⁸ in [0.5, 1)): 0.99·256 = 253.44 → 253/256 = 0.98828125
    old = torch.tensor([-0.99])
    close(round_old_logprob(old, bf16=True), [-0.98828125])
    assert round_old_logprob(old, bf16=False).item() == old.item()
    # unchanged weights: fp32 → ρ = 1; bf16 quirk → ρ = exp(−0.99 + 0.98828125) = exp(−0.00171875) = 0.99828273
    close(importance_ratio(old, round_old_logprob(old)), [1.0], tol=0)
    close(importance_ratio(old, round_old_logprob(old, bf16=True)), [0.99828273])
    # …which is outside the clip range 1e-4: clip fraction 1, gradient zeroed for A < 0
    lp = old.clone().requires_grad_(True)
    loss, st = clipped_surrogate(lp, round_old_logprob(old, bf16=True), torch.tensor([-1.0]))
    loss.backward()
    assert st["clip_frac"].item() == 1.0 and lp.grad.item() == 0.0


# ------------------------------------------------------------------------------------------------
# GDPO advantages.  Hand table (eps = 1e-4 on both unbiased stds):
#   group 0 ("text", w a=0.25 b=0.75): a = [1, 2, 3] → mean 2, std 1 → z = [−1, 0, 1]/1.0001
#                                       b = [0, 0, 3] → mean 1, std √3 → z = [−1, −1, 2]/1.7321508
#   group 1 ("general", w a=0.6 b=0.4): a = [5, 5, 5] → zero variance → z = 0
#                                       b = [2, 4, 0] → mean 2, std 2 → z = [0, 2, −2]/2.0001
#   c = [0.25·(−0.99990001) + 0.75·(−0.57731694), 0.75·(−0.57731694), 0.25·0.99990001 + 0.75·1.15463388,
#        0, 0.4·0.99995, −0.4·0.99995]
#     = [−0.68296271, −0.43298770, 1.11595041, 0, 0.39998000, −0.39998000]     (sums to 0 per group)
#   batch mean 0; unbiased std = sqrt(Σc²/5) = sqrt(2.21922974/5) = 0.66621764
#   A = c / 0.66631764 = [−1.02498068, −0.64982176, 1.67480244, 0, 0.60028427, −0.60028427]

REWARDS = {"a": torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), "b": torch.tensor([0.0, 0.0, 3.0, 2.0, 4.0, 0.0])}
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
CATS = ["text", "text", "text", "general", "general", "general"]
CAT_W = {"text": {"a": 0.25, "b": 0.75}, "general": {"a": 0.6, "b": 0.4}}
A_HAND = [-1.02498068, -0.64982176, 1.67480244, 0.0, 0.60028427, -0.60028427]


def test_per_sample_weights():
    w = per_sample_weights(CATS, CAT_W, ["a", "b", "ocr"])
    close(w["a"], [0.25] * 3 + [0.6] * 3)
    close(w["b"], [0.75] * 3 + [0.4] * 3)
    close(w["ocr"], [0.0] * 6)  # missing in both categories → 0


def test_gdpo_hand_table():
    w = per_sample_weights(CATS, CAT_W, ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero-variance group of size 3 is silent
        A, st = gdpo_advantages(REWARDS, GROUPS, w)
    close(A, A_HAND, tol=2e-6)
    assert A[3].item() == 0.0
    # stats: a = [1,2,3,5,5,5] mean 3.5, std sqrt(15.5/5) = 1.76068169; b mean 1.5, same std
    assert st["a/mean"] == pytest.approx(3.5) and st["a/std"] == pytest.approx(1.76068169, abs=1e-6)
    assert st["b/mean"] == pytest.approx(1.5) and st["b/std"] == pytest.approx(1.76068169, abs=1e-6)
    assert st["combined/std"] == pytest.approx(0.66621764, abs=1e-6)
    assert st["clip_frac"] == 0.0 and st["num_degenerate_groups"] == 0.0
    # weighted raw rewards: group 0: .25a+.75b = [0.25, 0.5, 3.0]; group 1: .6a+.4b = [3.8, 4.6, 3.0] → mean 2.525
    assert st["weighted_raw/mean"] == pytest.approx(2.525, abs=1e-6)
    # group order / labels do not matter
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    A2, _ = gdpo_advantages(
        {k: r[perm] for k, r in REWARDS.items()}, (GROUPS[perm] + 7) * 3, {k: x[perm] for k, x in w.items()}
    )
    close(A2, torch.tensor(A_HAND)[perm], tol=2e-6)


def test_gdpo_clip():
    w = per_sample_weights(CATS, CAT_W, ["a", "b"])
    A, st = gdpo_advantages(REWARDS, GROUPS, w, clip=1.0)
    close(A, [-1.0, -0.64982176, 1.0, 0.0, 0.60028427, -0.60028427], tol=2e-6)
    assert st["clip_frac"] == pytest.approx(2 / 6)


def test_gdpo_group_of_one_warns_and_gives_zero():
    r = {"a": torch.tensor([1.0, 3.0, 7.0])}
    w = {"a": torch.ones(3)}
    with pytest.warns(DegenerateGroupWarning):
        A, st = gdpo_advantages(r, torch.tensor([0, 1, 2]), w)  # G = 1
    assert torch.equal(A, torch.zeros(3)) and st["num_degenerate_groups"] == 3.0
    # mixed: group 0 = [1, 3] → z = [−1, 1]/(√2 + 1e-4) = ∓0.70705675; group 1 = [7] alone → 0
    # c = [−0.70705675, 0.70705675, 0]: mean 0, std 0.70705675 → A = c/(0.70715675) = [−0.99985859, 0.99985859, 0]
    with pytest.warns(DegenerateGroupWarning):
        A, _ = gdpo_advantages(r, torch.tensor([0, 0, 1]), w)
    close(A, [-0.99985859, 0.99985859, 0.0], tol=2e-6)
    assert not torch.isnan(A).any()
    # batch of one sample → 0 with a warning, not NaN
    with pytest.warns(DegenerateGroupWarning):
        A, _ = gdpo_advantages({"a": torch.tensor([2.0])}, torch.tensor([0]), {"a": torch.ones(1)})
    assert torch.equal(A, torch.zeros(1))


def test_gdpo_fully_degenerate_batch_is_zero():
    A, _ = gdpo_advantages({"a": torch.full((4,), 0.5)}, torch.tensor([0, 0, 1, 1]), {"a": torch.ones(4)})
    assert torch.equal(A, torch.zeros(4))


def test_gdpo_nan_excluded_and_weights_renormalised():
    # one group, w a = b = 0.5; a = [1, 2, 3] → z = [−0.99990001, 0, 0.99990001]
    # b = [NaN, 0, 2]: valid {0, 2}: mean 1, std √2 → z = [−, −0.70705675, 0.70705675]
    # c0 = 0.5·(−0.99990001)·(1.0/0.5) = −0.99990001   (b excluded, weight renormalised to 1)
    # c1 = 0.5·0 + 0.5·(−0.70705675) = −0.35352838;  c2 = 0.49995 + 0.35352838 = 0.85347838
    # mean −0.16665000, deviations [−0.83325001, −0.18687838, 1.02012838]
    # std = sqrt((0.69430558 + 0.03492353 + 1.04066192)/2) = 0.94072576 → A = dev/0.94082576
    r = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([float("nan"), 0.0, 2.0])}
    w = {"a": torch.full((3,), 0.5), "b": torch.full((3,), 0.5)}
    A, st = gdpo_advantages(r, torch.zeros(3, dtype=torch.long), w)
    close(A, [-0.88566788, -0.19863449, 1.08430236], tol=2e-6)
    assert st["b/num_invalid"] == 1.0 and st["b/mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        gdpo_advantages(r, torch.zeros(3, dtype=torch.long), w, nan_policy="raise")


def test_gdpo_nan_with_zero_weight_is_ignored():
    # OCR is NaN ("no quotes") for the general prompts, whose OCR weight is 0 → same as the hand table
    r = dict(REWARDS, ocr=torch.tensor([0.2, 0.9, 0.5] + [float("nan")] * 3))
    cw = {"text": {"a": 0.25, "b": 0.75, "ocr": 0.0}, "general": dict(CAT_W["general"])}
    w = per_sample_weights(CATS, cw, ["a", "b", "ocr"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A, st = gdpo_advantages(r, GROUPS, w)
    close(A, A_HAND, tol=2e-6)
    assert st["ocr/num_invalid"] == 3.0


def test_gdpo_sample_without_valid_reward_gets_zero():
    # sample 2's only weighted reward is NaN → c2 = 0 (warning); group 0 = samples 0,1: a = [0, 1] → z = ∓0.70705675
    # c = [−0.70705675, 0.70705675, 0] → A = [−0.99985859, 0.99985859, 0] (as in the mixed G=1 case)
    r = {"a": torch.tensor([0.0, 1.0, float("nan")])}
    with pytest.warns(DegenerateGroupWarning):
        A, _ = gdpo_advantages(r, torch.tensor([0, 0, 0]), {"a": torch.ones(3)})
    close(A, [-0.99985859, 0.99985859, 0.0], tol=2e-6)


# ------------------------------------------------------------------------------------------------
# losses


def test_clipped_surrogate_hand_values_and_gradient():
    # ε = 1e-4.  (Δlogp, A) → per-sample max(−Aρ, −A·clip(ρ)):
    #  1: (0,      +2) ρ = 1                 → −2                       grad −A·ρ = −2
    #  2: (5e-5,   +1) ρ = 1.00005000 inside → −1.00005000             grad −1.00005000
    #  3: (1e-3,   +1) ρ = 1.00100050 > 1+ε  → max(−1.0010005, −1.0001) = −1.0001 (clipped, grad 0)
    #  4: (1e-3,   −1) ρ = 1.00100050        → max(1.0010005, 1.0001) = 1.0010005 (grad +1.0010005)
    #  5: (−1e-3,  −1) ρ = 0.99900050 < 1−ε  → max(0.9990005, 0.9999) = 0.9999 (clipped, grad 0)
    #  6: (−1e-3,  +1) ρ = 0.99900050        → max(−0.9990005, −0.9999) = −0.9990005 (grad −0.9990005)
    #  mean = −2.99825000/6 = −0.49970833; clip fraction 4/6; d loss/d logp_i = grad_i·ρ-chain/6
    old = torch.zeros(6)
    logp = torch.tensor([0.0, 5e-5, 1e-3, 1e-3, -1e-3, -1e-3], requires_grad=True)
    adv = torch.tensor([2.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    loss, st = clipped_surrogate(logp, old, adv, clip_range=1e-4)
    close(loss, -0.49970833)
    assert st["clip_frac"].item() == pytest.approx(4 / 6)
    loss.backward()
    # d(−Aρ)/dlogp = −Aρ
    close(logp.grad, [-2 / 6, -1.00005000 / 6, 0.0, 1.00100050 / 6, 0.0, -0.99900050 / 6])
    # tuple form (low, high) = (−1e-4, 2e-3): sample 3 and 4 now inside → sample 3 term −1.0010005
    loss2, st2 = clipped_surrogate(logp.detach(), old, adv, clip_range=(-1e-4, 2e-3))
    close(loss2, (-2.99825000 - 1.0010005 + 1.0001) / 6)
    assert st2["clip_frac"].item() == pytest.approx(2 / 6)


def test_velocity_kl_hand_values():
    # sample 0: Δv = [0, 0, 0, 2] → ‖Δv‖²/D = 4/4 = 1; s = 0.5 → 1/(2·0.25 + 1e-7) = 1.99999960
    # sample 1: Δv = 0 → 0
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    v_ref = torch.tensor([[1.0, 2.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    kl = velocity_kl(v, v_ref, torch.tensor([0.5, 1.0]))
    close(kl, [1.9999996, 0.0])
    # scalar s = 1: 1/(2 + 1e-7) = 0.49999998
    close(velocity_kl(v[:1], v_ref[:1], 1.0), [0.49999998])
    # β = 5e-7: β·mean KL = 5e-7·0.9999998 = 4.999999e-7
    close(grpo_step_loss(torch.tensor(0.0), kl, kl_beta=5e-7), 4.999999e-7, tol=1e-12)
    # σ' = 0 with η=1 → s = 0: finite thanks to 1e-7: 1/1e-7 = 1e7
    close(velocity_kl(v[:1], v_ref[:1], 0.0), [1e7], tol=2.0)


def test_step_loss_scale_and_mixture():
    assert loss_scale(1, 30, 1) == pytest.approx(1 / 30)
    # (L_pol + β·mean KL)·scale = (1 + 0.5·3)·(1/(1·2·1)) = 1.25
    close(grpo_step_loss(torch.tensor(1.0), torch.tensor([2.0, 4.0]), kl_beta=0.5, scale=loss_scale(1, 2, 1)), 1.25)
    # (1 − 1e-4)·2 + 1e-4·10 = 1.9998 + 0.001 = 2.0008
    close(mix_sft_loss(torch.tensor(2.0), torch.tensor(10.0), 1e-4), 2.0008)
    close(mix_sft_loss(torch.tensor(2.0), torch.tensor(10.0), 0.0), 2.0)


def test_flow_matching_loss_and_noisy_latent():
    # x0 = [1, 0], ε = [0, 1] → target ε − x0 = [−1, 1]; v = [0, 0] → per-image MSE 1
    # second image v = target → 0 → mean over images 0.5
    x0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    eps = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    v = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])
    close(flow_matching_loss(v, x0, eps), 0.5)
    # x_σ at σ = 0.25: 0.75·[1, 0] + 0.25·[0, 1] = [0.75, 0.25]
    close(noisy_latents(x0[:1], eps[:1], 0.25), [[0.75, 0.25]])


def test_policy_equals_reference_gives_zero_kl_ratio_one_and_zero_grad_at_zero_advantage():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 3, 3, generator=g)
    w = torch.randn(2, 2, generator=g, requires_grad=True)  # toy "policy": v = w-mixed channels of x

    def policy(x):
        return torch.einsum("oc,bchw->bohw", w, x)

    with torch.no_grad():
        v_old = policy(x)
        step = cps_sde_step(x, v_old, 0.6, 0.5, eta=1.0, generator=g)
        old_lp = simplified_logprob(step.next_latent, step.mean)
        v_ref = v_old.clone()
    v = policy(x)
    lp = cps_logprob(x, v, 0.6, 0.5, step.next_latent, eta=1.0)
    kl = velocity_kl(v, v_ref, step.std)
    assert torch.equal(kl, torch.zeros(4))
    assert torch.equal(importance_ratio(lp, round_old_logprob(old_lp)), torch.ones(4))
    pol, st = clipped_surrogate(lp, round_old_logprob(old_lp), torch.zeros(4))
    assert st["clip_frac"].item() == 0.0
    loss = mix_sft_loss(grpo_step_loss(pol, kl, 5e-7, loss_scale(1, 30, 1)), torch.tensor(0.0), 1e-4)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(w.grad, torch.zeros(2, 2))
    # with A ≠ 0 the policy term does give a gradient
    w.grad = None
    lp = cps_logprob(x, policy(x), 0.6, 0.5, step.next_latent, eta=1.0)
    clipped_surrogate(lp, old_lp, torch.tensor([1.0, -1.0, 0.5, 2.0]))[0].backward()
    assert w.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_quirks():
    c = GRPOConfig()
    assert (c.group_size, c.eta, c.timestep_fraction, c.clip_range, c.kl_beta, c.sft_lambda) == (
        8,
        1.0,
        0.6,
        1e-4,
        5e-7,
        1e-4,
    )
    assert (c.lr, c.warmup_steps, c.max_grad_norm, c.cfg_scale, c.num_steps, c.resolution) == (
        2e-6,
        20,
        1.0,
        0.0,
        50,
        512,
    )
    assert c.logprob == "simplified" and c.num_train_timesteps == 30 and c.latent_shape == (16, 64, 64)
    assert c.optimizer_step_per_timestep is False and c.bf16_old_logprob is False and c.update_every == "rollout"
    o = GRPOConfig.official()
    assert o.optimizer_step_per_timestep and o.bf16_old_logprob and o.update_every == "timestep"
    assert c.category_weights["text_render"] == {"unifiedreward_think": 0.2, "clip_sim": 0.1, "ocr": 0.7}
    assert sum(c.category_weights["general"].values()) == pytest.approx(1.0)
    c.category_weights["general"]["x"] = 1.0
    assert "x" not in GRPOConfig().category_weights["general"]  # no shared mutable default
    with pytest.raises(ValueError):
        GRPOConfig(logprob="bogus")
    with pytest.raises(ValueError):
        GRPOConfig(eta=1.5)
