"""Stage 3 of DeepGen 1.0: MR-GRPO reinforcement learning with mixed rewards, headless and accelerate-based.

    deepgen train --stage 3 --config configs/train/stage3_1gpu_lora.toml [key=value ...]
    accelerate launch --num_processes 8 -m deepgen.train.grpo.trainer --config configs/train/stage3_8gpu.toml

:class:`GRPOTrainer` is the run; its loop (:meth:`GRPOTrainer.train`) and one iteration
(:meth:`GRPOTrainer.train_step`) are here, each phase a documented method of its own module:

=================  ========================================================================================
``setup.py``       accelerator, prompts, rewards (``reward_setup.py``), SFT data, model, policy, reference,
                   optimiser, resume; the policy / reference velocities
``step.py``        rollout → rewards + GDPO advantages → PPO-clip + KL passes → SFT-Aux → optimiser step
``output.py``      the step's log record, the JSONL log, checkpoints and the interrupt checkpoint
``evaluate.py``    ODE + CFG samples of the eval prompts, scored by the run's rewards
``cli.py``         ``run_grpo_from_config_file``, ``main``
=================  ========================================================================================

The maths is the core (``sde``, ``logprob``, ``advantage``, ``loss``); accelerate setup, model loading, trainable
selection, the DDP wrapper and checkpoints come from :mod:`deepgen.train.runtime`.  See docs/mrgrpo.md.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .. import runtime as R
from .. import sharding
from .cli import main, run_grpo_from_config_file
from .evaluate import Evaluation
from .output import LOG_FILE, RunOutput, read_log
from .run_config import Stage3Config
from .setup import RunSetup, lora_disabled
from .step import RolloutBatch, StepPhases, ZeroAdvantageWarning, new_step_stats

log = logging.getLogger("deepgen.train.grpo")

__all__ = [
    "LOG_FILE",
    "GRPOTrainer",
    "RolloutBatch",
    "ZeroAdvantageWarning",
    "lora_disabled",
    "main",
    "read_log",
    "run_grpo",
    "run_grpo_from_config_file",
]


class GRPOTrainer(RunSetup, StepPhases, Evaluation, RunOutput):
    """An MR-GRPO run.  ``GRPOTrainer(cfg).setup().train()`` returns the per-step log records.

    ``model``: an already built DeepGenModel (tests; default: ``runtime.load_model_for_training(cfg.model)``).
    ``rewards``: ``{name: Reward | callable}`` objects that override / add to the registry for this run.
    ``callbacks``: :class:`deepgen.train.runtime.TrainCallback` objects (``StepInfo.extra`` holds the GRPO
    record of the step; ``step`` counts trainer steps = rollouts).
    """

    def __init__(
        self,
        cfg: Stage3Config,
        *,
        accelerator=None,
        model=None,
        rewards: Mapping[str, Any] | None = None,
        callbacks: Iterable[R.TrainCallback] = (),
    ):
        self.cfg = cfg.validate()
        self.g = cfg.grpo
        self._accelerator = accelerator
        self._model = model
        self._reward_overrides = dict(rewards or {})
        self.callbacks = R.CallbackList(callbacks)
        self.history: list[dict] = []
        self.start_step = 0
        self.updates = 0
        self._setup_done = False

    def train_step(self, step: int) -> dict:
        """One MR-GRPO iteration (mrgrpo-reference.md §5) on this process; returns its log record."""
        lr = self.lr_scheduler.get_last_lr()[0]
        stats = new_step_stats()
        clock, times = R.Stopwatch(), {}
        batch = self.rollout(step)  # prompts ×G → CPS trajectories + old log-probs → images
        times["rollout"] = clock.lap()
        self.score(batch)  # rewards (category weights) → GDPO advantages
        times["reward"] = clock.lap()
        self.policy_update(batch, stats)  # K timesteps × micro-batches: PPO-clip + β·KL, (1 − λ)·ℓ backward
        self.sft_aux(step, stats)  # λ·L_SFT backward
        if not self.g.optimizer_step_per_timestep:
            self.optimizer_step(stats)  # one AdamW update per rollout (as designed)
        times["train"] = clock.lap()
        return self._record(step, batch, stats, lr, times)

    def train(self) -> list[dict]:
        """Trainer steps ``start_step … max_steps``: each :meth:`train_step`, then its report (log, console,
        callbacks), a periodic checkpoint and evaluation; a final checkpoint and the cross-process weight check
        at the end.  An interrupt (Ctrl-C, a callback raising) checkpoints the last completed step when it can."""
        if not self._setup_done:
            self.setup()
        g = self.g
        self.callbacks.on_train_start(self.run_info)
        watch = R.Stopwatch()
        if self.eval_set is not None and self.cfg.eval_before_training and self.start_step == 0:
            self.evaluate(0)
        self._clean_step: int | None = self.start_step  # params == after this many completed steps
        try:
            for step in range(self.start_step, g.max_steps):
                ts = time.perf_counter()
                rec = self.train_step(step)
                done = self._clean_step = step + 1
                rec["time/step"] = round(time.perf_counter() - ts, 4)
                every = self.cfg.val_loss_every
                if self.val_loss_set is not None and (done % every == 0 or done == g.max_steps):
                    with sharding.full_weights(self.accelerator, self.model):  # FSDP: every process, same forwards
                        rec["val_loss"] = self.val_loss_set.compute(
                            self.model, self.grid, accelerator=self.accelerator, autocast=self.accelerator.autocast
                        )
                self.report_step(rec, watch)
                if g.save_every and done % g.save_every == 0 and done != g.max_steps:
                    self.save(done, "periodic")
                if self.eval_set is not None and g.eval_every and done % g.eval_every == 0:
                    self.evaluate(done)
            self.save(g.max_steps, "final")
            self._check_in_sync()
        except BaseException as exc:
            path = self._save_on_interrupt()
            self.callbacks.on_interrupt(self.run_info, self._clean_step or 0, path, exc)
            raise
        self.callbacks.on_train_end(self.run_info, self.history)
        return self.history


def run_grpo(cfg: Stage3Config, *, callbacks: Iterable[R.TrainCallback] = (), **kwargs) -> list[dict]:
    """Set up and run an MR-GRPO training from a config; returns the per-step records."""
    return GRPOTrainer(cfg, callbacks=callbacks, **kwargs).setup().train()


if __name__ == "__main__":
    sys.exit(main())
