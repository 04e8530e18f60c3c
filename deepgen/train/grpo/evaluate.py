"""Stage 3 evaluation: ODE samples of the eval prompts with CFG, scored by the run's rewards (ref §6)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import sharding
from .output import _finite_stats
from .state import RunState

log = logging.getLogger("deepgen.train.grpo")

__all__ = ["Evaluation"]


class Evaluation(RunState):
    """``evaluate(step)`` of a GRPO run (mixed into ``GRPOTrainer``)."""

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """ODE samples (``eval_num_steps``, CFG ``eval_cfg_scale``, seeds ``eval_seed + 1000·index + dup``) of the
        eval prompts, split over the processes, scored with each prompt's category weights."""
        acc, cfg = self.accelerator, self.cfg
        assert self.eval_set is not None, "evaluate() needs eval_prompts"
        recs = self.eval_set.records
        mine = [(i, r) for i, r in enumerate(recs) if i % self.world == self.rank]
        rows: list[dict[str, Any]] = []
        images_all: list[tuple[int, int, Any]] = []
        with sharding.full_weights(acc, self.model):  # FSDP: every process samples as many prompts (setup checks)
            for i, r in mine:
                self._eval_prompt(i, r, rows, images_all)
        from accelerate.utils import gather_object

        all_rows = gather_object(rows) if self.world > 1 else rows
        out: dict[str, Any] = {"step": step, "eval": True}
        for name in self.reward_names:
            vals = torch.tensor([row["scores"].get(name, float("nan")) for row in all_rows], dtype=torch.float64)
            out[f"eval/{name}/mean"], out[f"eval/{name}/std"], _ = _finite_stats(vals)
        out["eval/weighted/mean"], out["eval/weighted/std"], _ = _finite_stats(
            torch.tensor([row["total"] for row in all_rows], dtype=torch.float64)
        )
        paths: list[Path] = []
        if cfg.eval_save_images:
            folder = self.output_dir / "eval" / f"step-{step:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, d, im in images_all:
                p = folder / f"{i:05d}_{d}.png"
                im.save(p)
                paths.append(p)
        if acc.is_main_process:
            self._write_log(out)
            log.info(
                "eval step %d: %s", step, "  ".join(f"{k[5:]} {v:.4f}" for k, v in out.items() if k.endswith("/mean"))
            )
            self.callbacks.on_validation(self.run_info, step, [im for _, _, im in images_all], paths)
        self.history.append(out)
        return out

    def _eval_prompt(self, i: int, r, rows: list, images_all: list) -> None:
        cfg, g = self.cfg, self.g
        n = cfg.eval_images_per_prompt
        size = g.resolution
        guided = g.eval_cfg_scale > 1.0
        with self._autocast():
            cond = self.pipeline.encode([r.prompt], guidance=guided).repeat(n)
            lat = self.pipeline.sample(
                cond,
                size,
                size,
                num_steps=cfg.eval_num_steps,
                cfg_scale=g.eval_cfg_scale,
                seed=[cfg.eval_seed + 1000 * i + d for d in range(n)],
            )
        images = self.decode(lat)
        res = self.reward_mix(images, [r.prompt] * n, [i] * n, weights=[self.category_weights[r.category]] * n)
        for d, im in enumerate(images):
            rows.append(
                {
                    "index": i,
                    "dup": d,
                    "category": r.category,
                    "scores": {k: float(v[d]) for k, v in res.scores.items()},
                    "total": float(res.total[d]),
                }
            )
            images_all.append((i, d, im))
