"""Stage 3 output: the per-step log record, the JSONL log and console line, checkpoints (periodic, final, on
interrupt) with the LoRA export, and the end-of-run check that every process holds the same weights.

:class:`RunOutput` is mixed into :class:`~deepgen.train.grpo.trainer.GRPOTrainer`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import runtime as R
from .. import sharding
from ..step_log import truncate_step_log
from ..trackers import throughput
from .state import RunState
from .step import RolloutBatch

log = logging.getLogger("deepgen.train.grpo")

__all__ = ["ADV_HIST_BINS", "LOG_FILE", "RunOutput", "read_log"]

LOG_FILE = "log.jsonl"
ADV_HIST_BINS = 10


class RunOutput(RunState):
    """Log records, log file and checkpoints of a GRPO run."""

    def _record(self, step: int, batch: RolloutBatch, st: dict, lr: float | Tensor, times: dict) -> dict:
        """The log record of trainer step ``step``: rewards and advantages over every process, the loss terms'
        means (``st`` from the phases), maxima, grad norm, timings."""
        assert (
            batch.scores is not None
            and batch.total is not None
            and batch.advantages is not None
            and batch.adv_stats is not None
        ), "score(batch) runs before _record(batch)"
        acc = self.accelerator
        g = self.g
        rec: dict[str, Any] = {"step": step + 1, "lr": float(lr), "updates": self.updates}
        # rewards over every process
        for name in self.reward_names:
            col = batch.scores.get(name, torch.full((len(batch.images),), float("nan")))
            allv = acc.gather(col.to(self.device)).cpu()
            mean, std, n = _finite_stats(allv)
            rec[f"reward/{name}/mean"], rec[f"reward/{name}/std"], rec[f"reward/{name}/n"] = mean, std, n
        total = acc.gather(batch.total.to(self.device)).cpu()
        rec["reward/weighted/mean"], rec["reward/weighted/std"], _ = _finite_stats(total)
        adv = acc.gather(batch.advantages.to(self.device)).cpu().float()
        c = g.adv_clip or 5.0
        rec["adv/hist"] = torch.histc(adv, bins=ADV_HIST_BINS, min=-c, max=c).long().tolist()
        rec["adv/hist_range"] = [-c, c]
        rec["adv/std"] = float(adv.std()) if adv.numel() > 1 else float("nan")
        rec["adv/abs_mean"] = float(adv.abs().mean())
        rec["adv/zero_frac"] = float((adv == 0).float().mean())
        sums = {
            "policy_loss": st["policy_loss"],
            "kl": st["kl"],
            "ratio_mean": st["ratio"],
            "clip_frac": st["clip_frac"],
            "approx_kl": st["approx_kl"],
            "adv/clip_frac": batch.adv_stats.get("clip_frac", 0.0),
            "adv/num_degenerate_groups": batch.adv_stats.get("num_degenerate_groups", 0.0),
        }
        counts = {k: st["count"] for k in ("policy_loss", "kl", "ratio_mean", "clip_frac", "approx_kl")}
        counts.update({"adv/clip_frac": 1.0, "adv/num_degenerate_groups": 1.0 / self.world})
        if not math.isnan(st["sft_loss"]):
            sums["sft_loss"], counts["sft_loss"] = st["sft_loss"], 1.0
        rec.update(R.global_mean(acc, sums, counts))
        mx = torch.tensor([st["kl_max"], st["ratio_max_dev"]], dtype=torch.float64, device=self.device)
        if self.world > 1:
            mx = _all_max(mx)
        rec["kl_max"], rec["ratio_max_dev"] = float(mx[0]), float(mx[1])
        rec["kl_loss"] = g.kl_beta * rec.get("kl", 0.0)
        rec["grad_norm"] = st["grad_norm"]
        rec["train_steps"] = st["train_steps"]
        rec["num_images"] = len(batch.images) * self.world
        rec.update({f"time/{k}": round(v, 4) for k, v in times.items()})
        return rec

    def report_step(self, rec: dict, watch: R.Stopwatch) -> None:
        """A finished step's record: into the history, the JSONL log and (every ``log_every`` steps) the console
        on the main process, and to the callbacks' ``on_step_end``."""
        g, done = self.g, rec["step"]
        images = rec["num_images"] / self.world  # this process's rollouts; DiT tokens per image: 2x2 patches
        rec.update(throughput(images, images * (g.resolution // 16) ** 2, rec.get("time/step", 0.0), "time/"))
        self.history.append(rec)
        if self.accelerator.is_main_process:
            self._write_log(rec)
            if done % self.cfg.log_every == 0 or done == g.max_steps:
                log.info(_console_line(rec, self.reward_names))
        info = R.StepInfo(
            step=done,
            total_steps=g.max_steps,
            loss=rec.get("policy_loss", 0.0),
            task_losses={"grpo": rec.get("policy_loss", 0.0)},
            lr=rec["lr"],
            grad_norm=rec["grad_norm"],
            samples=done * rec["num_images"],
            step_time=rec["time/step"],
            elapsed=watch.elapsed,
            extra=rec,
        )
        self.callbacks.on_step_end(self.run_info, info)

    def _check_in_sync(self) -> None:
        """With several processes: every rank must hold bit-identical trainable parameters (DDP averaged the
        same gradients); a mismatch means a desynchronised run, which is an error, not a warning."""
        if self.world == 1 or sharding.every_process_samples(self.accelerator):  # FSDP, ZeRO-3: own shards only
            return
        from accelerate.utils import gather_object

        local = [
            float(sum(p.detach().double().sum() for p in self.params.values())),
            float(sum(p.detach().double().abs().sum() for p in self.params.values())),
        ]
        sums = gather_object([local])
        if any(s != sums[0] for s in sums):
            raise R.TrainingError(f"trainable parameters differ between processes at the end of training: {sums}")

    def _save_on_interrupt(self) -> Path | None:
        """Checkpoint the last completed trainer step if the parameters are still exactly its result.

        In the default mode (one update per rollout) an interrupt inside a step leaves the parameters of the
        previous step, which is saved.  In update-every-timestep mode an interrupt after an update inside a step
        leaves half-updated parameters; nothing is written then and a resume starts from the last checkpoint.
        """
        step = self._clean_step
        if step is None:
            log.warning(
                "interrupted after an optimizer update inside a step (update-every-timestep mode): no "
                "checkpoint written; a resume continues from checkpoint %s",
                self.ckpt.last_saved_step,
            )
            return None
        if step <= self.start_step or self.ckpt.last_saved_step == step:
            return None
        try:
            return self.save(step, "interrupt")
        except Exception as e:  # noqa: BLE001 - never hide the original exception
            log.error("could not write the interrupt checkpoint: %s", e)
            return None

    # ------------------------------------------------------------------------------------------ output
    def save(self, step: int, reason: str) -> Path | None:
        if self.ckpt.last_saved_step == step:
            return None
        pos = {"updates": self.updates, "sft": self.sft_loader.state_dict() if self.sft_loader is not None else None}
        path = self.ckpt.save(
            step,
            trainable=self.params,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            data_position=pos,
            extra={"updates": self.updates, "reason": reason},
            model=self.loss_module,
        )
        with sharding.full_weights(self.accelerator, self.model):  # FSDP: gathered on every process
            self._exports(step, reason, path)
        self.callbacks.on_checkpoint(self.run_info, step, path, reason)
        return path

    def _exports(self, step: int, reason: str, path: Path | None) -> None:
        exports: dict[str, Path] = {}
        if self.accelerator.is_main_process:
            assert path is not None  # CheckpointManager.save returns the path on the main process
            exports["checkpoint"] = path
            if self.cfg.policy == "lora" and self.cfg.save_lora_every_checkpoint:
                from ...lora import save_lora

                exports["lora"] = save_lora(
                    self.model,
                    self.output_dir / "lora.safetensors",
                    metadata={"stage": 3, "step": step, "rank": self.cfg.dit_lora_rank},
                )
            if reason == "interrupt":
                self._truncate_log(step)
            self.callbacks.on_export(self.run_info, exports)

    @property
    def log_path(self) -> Path:
        return self.output_dir / LOG_FILE

    def _prepare_log_file(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.start_step == 0:
            self.log_path.write_text("", encoding="utf-8")
        else:
            self._truncate_log(self.start_step)

    def _truncate_log(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run writes them again)."""
        truncate_step_log(self.log_path, step)

    def _write_log(self, rec: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")


def _finite_stats(x: Tensor) -> tuple[float, float, int]:
    v = x[torch.isfinite(x)].double()
    n = v.numel()
    mean = float(v.mean()) if n else float("nan")
    std = float(v.std(unbiased=True)) if n > 1 else float("nan")
    return mean, std, n


def _all_max(t: Tensor) -> Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Tensor):
        return o.tolist()
    return str(o)


def _console_line(rec: dict, names: Sequence[str]) -> str:
    parts = [f"step {rec['step']}", f"lr {rec['lr']:.2e}"]
    for n in names:
        parts.append(f"{n} {rec[f'reward/{n}/mean']:.4f}±{rec[f'reward/{n}/std']:.3f}")
    parts.append(f"kl {rec.get('kl', 0.0):.3e}")
    parts.append(f"clip {rec.get('clip_frac', 0.0):.3f}")
    parts.append(f"ratio-1 {rec.get('ratio_max_dev', 0.0):.1e}")
    if "sft_loss" in rec:
        parts.append(f"sft {rec['sft_loss']:.4f}")
    if "val_loss" in rec:
        parts.append(f"val_loss {rec['val_loss']:.4f}")
    parts.append(
        "adv " + "".join(" ▁▂▃▄▅▆▇█"[min(8, math.ceil(8 * c / max(1, max(rec["adv/hist"]))))] for c in rec["adv/hist"])
    )
    parts.append(f"{rec.get('time/step', 0.0):.2f}s")
    return "  ".join(parts)


def read_log(output_dir: str | os.PathLike) -> list[dict]:
    """The JSONL log of a run (training records and ``"eval": true`` records)."""
    path = Path(output_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
