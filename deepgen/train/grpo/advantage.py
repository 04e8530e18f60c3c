"""GDPO advantages (mrgrpo-reference.md §3, the code default ``--atrain_adv_type gdpo``).

For reward k, sample i in group g(i) (one group = the G images of one prompt):

1. ``a_ik = (r_ik − mean_g(r_k)) / (std_g(r_k) + eps)``, unbiased (N−1) std, eps = 1e-4;
2. ``c_i = Σ_k w_ik · a_ik`` with the per-sample (per-category) weights;
3. ``A_i = (c_i − mean_B(c)) / (std_B(c) + eps)`` over the local batch, unbiased std, eps = 1e-4;
4. ``A_i ← clamp(A_i, −clip, clip)``, clip = 5.

Deviations from the official code (which has no guards), all documented in docs/mrgrpo.md:

* **groups with fewer than 2 valid values** for a reward (G = 1, or NaNs leaving one value): the
  unbiased std is undefined (NaN in torch), so that reward's z-score is set to 0 for the group and a
  :class:`DegenerateGroupWarning` is emitted. Zero-variance groups of size ≥ 2 need no guard (the
  numerator is 0) and are silent, as in the official code. A batch with fewer than 2 samples gives
  all-zero advantages, also with a warning.
* **non-finite rewards** (NaN/±inf = "not applicable", e.g. OCR for a prompt without quotes) with
  ``nan_policy="exclude"`` (default): excluded from that reward's group mean/std, and the sample's
  remaining weights are rescaled to its original total weight,
  ``c_i = (Σ_k w_ik) / (Σ_{k valid} w_ik) · Σ_{k valid} w_ik·a_ik``.
  A non-finite reward with weight 0 is ignored (official: ``0·NaN = NaN``). A sample left with no
  valid weighted reward gets ``c_i = 0`` (warning). ``nan_policy="raise"`` raises instead.
"""

from __future__ import annotations

import warnings
from typing import Hashable, Mapping, Sequence, TypeVar

import torch

__all__ = ["DegenerateGroupWarning", "per_sample_weights", "gdpo_advantages"]

_Category = TypeVar("_Category", bound=Hashable)  # a prompt category (a str in the trainer)


class DegenerateGroupWarning(UserWarning):
    """A group (or batch) too small to estimate an unbiased std; its advantage term is set to 0."""


def per_sample_weights(
    categories: Sequence[_Category],
    category_weights: Mapping[_Category, Mapping[str, float]],
    reward_names: Sequence[str],
    *,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Weight table ``reward name → (B,)`` from each sample's category.

    A reward missing from a category's dict has weight 0 (as in the official dataset YAML);
    an unknown category raises ``KeyError``.
    """
    out = {}
    for name in reward_names:
        out[name] = torch.tensor(
            [float(category_weights[c].get(name, 0.0)) for c in categories], dtype=torch.float32, device=device
        )
    return out


def _std_unbiased(x: torch.Tensor) -> torch.Tensor:
    return x.std(unbiased=True)


def gdpo_advantages(
    rewards: Mapping[str, torch.Tensor],
    group_ids: torch.Tensor | Sequence[int],
    weights: Mapping[str, torch.Tensor],
    *,
    eps: float = 1e-4,
    clip: float | None = 5.0,
    nan_policy: str = "exclude",
) -> tuple[torch.Tensor, dict[str, float]]:
    """GDPO advantages for one rank's local batch.

    Args:
        rewards: reward name → ``(B,)`` raw rewards (non-finite = not applicable, see module doc).
        group_ids: ``(B,)`` integer prompt-group id of each sample (any labels; need not be sorted).
        weights: reward name → ``(B,)`` per-sample weights (see :func:`per_sample_weights`); a reward
            without an entry has weight 0. Keys not in ``rewards`` raise ``KeyError``.
        eps: added to both unbiased stds (1e-4).
        clip: final clamp to ``±clip`` (5.0); None disables it.
        nan_policy: ``"exclude"`` (default) or ``"raise"``.

    Returns:
        ``(advantages, stats)``: fp32 ``(B,)`` tensor on the rewards' device, and a dict of floats:
        ``{name}/mean``, ``{name}/std`` (unbiased, over valid values), ``{name}/num_invalid`` for each
        reward, ``weighted_raw/mean`` (weighted raw reward, logging only; weights renormalised like c),
        ``combined/std`` (batch std of c), ``num_degenerate_groups`` (reward-group pairs zeroed for
        size < 2), ``clip_frac`` (fraction of advantages clamped).
    """
    if nan_policy not in ("exclude", "raise"):
        raise ValueError(f"nan_policy must be 'exclude' or 'raise', got {nan_policy!r}")
    unknown = set(weights) - set(rewards)
    if unknown:
        raise KeyError(f"weights given for unknown rewards: {sorted(unknown)}")
    names = list(rewards)
    if not names:
        raise ValueError("no rewards given")
    first = torch.as_tensor(rewards[names[0]])
    device = first.device
    B = first.shape[0]
    gid = torch.as_tensor(group_ids, device=device).reshape(-1)
    if gid.shape[0] != B:
        raise ValueError(f"group_ids has {gid.shape[0]} entries, rewards have {B}")

    R = torch.stack([torch.as_tensor(rewards[n], device=device).reshape(-1).float() for n in names], dim=1)  # (B,K)
    if R.shape[0] != B:
        raise ValueError("all rewards must have the same batch size")
    W = torch.stack(
        [
            torch.as_tensor(weights[n], device=device).reshape(-1).float() if n in weights else R.new_zeros(B)
            for n in names
        ],
        dim=1,
    )
    if W.shape[0] != B:
        raise ValueError("all weights must have the batch size of the rewards")
    valid = torch.isfinite(R)
    if nan_policy == "raise" and not bool(valid.all()):
        bad = [n for j, n in enumerate(names) if not bool(valid[:, j].all())]
        raise ValueError(f"non-finite rewards in {bad}")

    stats: dict[str, float] = {}
    for j, n in enumerate(names):
        col = R[valid[:, j], j]
        stats[f"{n}/mean"] = float(col.mean()) if col.numel() else float("nan")
        stats[f"{n}/std"] = float(_std_unbiased(col)) if col.numel() > 1 else float("nan")
        stats[f"{n}/num_invalid"] = float(B - col.numel())

    # 1. reward-wise group z-scores over valid members
    Z = torch.zeros_like(R)
    degenerate = []
    for g in torch.unique(gid):
        members = gid == g
        for j, n in enumerate(names):
            m = members & valid[:, j]
            cnt = int(m.sum())
            if cnt == 0:
                continue
            if cnt < 2:
                # only matters if the reward is weighted for this group
                if bool((W[m, j] != 0).any()):
                    degenerate.append((g.item(), n))
                continue
            vals = R[m, j]
            Z[m, j] = (vals - vals.mean()) / (_std_unbiased(vals) + eps)
    if degenerate:
        warnings.warn(
            f"GDPO: {len(degenerate)} (group, reward) pair(s) with fewer than 2 valid samples "
            f"(e.g. {degenerate[:3]}); their z-score is set to 0 (unbiased std undefined)",
            DegenerateGroupWarning,
            stacklevel=2,
        )
    stats["num_degenerate_groups"] = float(len(degenerate))

    # 2. category-weighted sum, weights renormalised over the valid rewards of each sample
    Wv = torch.where(valid, W, torch.zeros_like(W))
    total_w = W.sum(dim=1)
    valid_w = Wv.sum(dim=1)
    has_w = valid_w != 0
    no_valid = (~has_w) & (total_w != 0)
    if bool(no_valid.any()):
        warnings.warn(
            f"GDPO: {int(no_valid.sum())} sample(s) have no valid weighted reward; their advantage is 0",
            DegenerateGroupWarning,
            stacklevel=2,
        )
    scale = torch.where(
        has_w, total_w / torch.where(has_w, valid_w, torch.ones_like(valid_w)), torch.zeros_like(valid_w)
    )
    c = (Wv * Z).sum(dim=1) * scale
    raw = (Wv * torch.where(valid, R, torch.zeros_like(R))).sum(dim=1) * scale
    stats["weighted_raw/mean"] = float(raw.mean())

    # 3. batch-wise normalisation (unbiased std over the local batch)
    if B < 2:
        warnings.warn("GDPO: batch of fewer than 2 samples; advantages set to 0", DegenerateGroupWarning, stacklevel=2)
        stats["combined/std"] = float("nan")
        stats["clip_frac"] = 0.0
        return torch.zeros_like(c), stats
    c_std = _std_unbiased(c)
    stats["combined/std"] = float(c_std)
    A = (c - c.mean()) / (c_std + eps)

    # 4. clip
    if clip is not None:
        clipped = A.abs() > clip
        stats["clip_frac"] = float(clipped.float().mean())
        A = A.clamp(-clip, clip)
    else:
        stats["clip_frac"] = 0.0
    return A, stats
