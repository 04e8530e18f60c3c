"""The state a GRPO run's mixins share, declared once so the type checker can check each mixin on its own.

:class:`~deepgen.train.grpo.trainer.GRPOTrainer` is assembled from :class:`~.setup.RunSetup`,
:class:`~.step.StepPhases`, :class:`~.evaluate.Evaluation` and :class:`~.output.RunOutput`; each reads attributes
another one sets and calls methods another one defines.  :class:`RunState` is their common base: it only
*annotates* the attributes (no values: nothing exists before ``__init__`` / ``setup`` sets it) and declares the
methods one mixin calls on another, which the mixin defining them overrides (``GRPOTrainer``'s MRO puts this
class last).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import Tensor

    from ...model.deepgen import DeepGenModel
    from ...pipeline import DeepGenPipeline
    from ...rewards import RewardMix
    from ..callbacks import CallbackList, RunInfo
    from ..checkpoint_manager import CheckpointManager
    from ..data import MicroBatchLoader
    from ..losses import TrainingGrid
    from .config import GRPOConfig
    from .prompts import PromptSet
    from .run_config import Stage3Config

__all__ = ["RunState"]


class RunState:
    """Attributes and cross-mixin methods of a GRPO run (see the module docstring)."""

    # GRPOTrainer.__init__
    cfg: Stage3Config
    g: GRPOConfig
    _accelerator: Accelerator | None
    _model: DeepGenModel | None
    _reward_overrides: dict[str, Any]
    callbacks: CallbackList
    history: list[dict]
    start_step: int
    updates: int
    _setup_done: bool
    _clean_step: int | None  # parameters == after this many completed steps; None: past it (mid-step update)

    # RunSetup.setup
    accelerator: Accelerator
    rank: int
    world: int
    device: torch.device
    mixed_precision: str
    prompts_per_rank: int
    sft_batch_per_rank: int  # sft_batch_size / processes (0 without SFT-Aux data)
    val_loss_set: Any  # a FixedNoiseValidation of sft_data, or None (no SFT-Aux data, or val_loss_every = 0)
    output_dir: Path
    prompt_set: PromptSet
    eval_set: PromptSet | None
    category_weights: dict[str, dict[str, float]]
    reward_names: list[str]
    reward_mix: RewardMix
    ckpt: CheckpointManager
    sft_loader: MicroBatchLoader | None
    _sft_iter: Iterator[Any] | None
    model: DeepGenModel
    reference_mode: str
    ref_transformer: torch.nn.Module | None
    params: dict[str, torch.nn.Parameter]
    num_trainable: int
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_module: torch.nn.Module  # the LossModule, DDP-wrapped by accelerate with several processes
    optimizer: torch.optim.Optimizer  # accelerate's AcceleratedOptimizer
    pipeline: DeepGenPipeline
    sigmas: Tensor
    timesteps: Tensor
    grid: TrainingGrid
    run_info: RunInfo

    # ------------------------------------------------------------------ defined by the mixins
    def _prepare_log_file(self) -> None:  # RunOutput
        raise NotImplementedError

    def _write_log(self, rec: dict) -> None:  # RunOutput
        raise NotImplementedError

    def _loss_fn(self, model: torch.nn.Module, kind: str, **kw: Any) -> dict:  # StepPhases
        raise NotImplementedError

    def _autocast(self) -> AbstractContextManager[Any]:  # StepPhases
        raise NotImplementedError

    def decode(self, latents: Tensor) -> list:  # StepPhases
        raise NotImplementedError

    def policy_velocity(self, x: Tensor, t: Tensor, context: Tensor, pooled: Tensor) -> Tensor:  # RunSetup
        raise NotImplementedError

    def reference_velocity(self, x: Tensor, t: Tensor, context: Tensor, pooled: Tensor) -> Tensor:  # RunSetup
        raise NotImplementedError
