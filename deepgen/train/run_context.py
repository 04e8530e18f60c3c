"""What a stage 1-2 run does besides training steps: checkpoints, validation images and the exports (a LoRA file
and an official-layout checkpoint)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import sharding

if TYPE_CHECKING:
    from .trainer import SFTTrainer

log = logging.getLogger("deepgen.train")
EXPORT_DIR = "export"
VALIDATION_DIR = "validation"


@dataclass
class RunContext:
    """The pieces of one run that saving, validation and export need (built by SFTTrainer.run)."""

    t: SFTTrainer  # the trainer: its config, callbacks, output folder and LoRA spec
    acc: Any
    model: Any
    wrapper: Any
    optimizer: Any
    scheduler: Any
    trainable: Any
    manager: Any
    run: Any
    result: Any
    grid: Any
    device: Any
    scb_initial: Any
    datasets: Any

    def save(self, step: int, position: dict, samples: int, reason: str) -> Path | None:
        path = self.manager.save(
            step,
            trainable=self.trainable,
            optimizer=self.optimizer,
            lr_scheduler=self.scheduler,
            grad_scaler=getattr(self.acc, "scaler", None),
            data_position=position,
            extra={"samples": samples, "reason": reason, "source": self.t.source.to_dict() if self.t.source else None},
            model=self.wrapper,
        )
        if path is not None:
            self.result.checkpoint = path
        if reason == "periodic" and self.t.cfg.save_lora_every_checkpoint and self._lora_wanted():
            with sharding.full_weights(self.acc, self.model):  # every process (collective under FSDP and ZeRO-3)
                if self.acc.is_main_process:
                    base = self.lora_target()
                    self.write_lora(base.with_name(f"{base.stem}_{step:06d}_steps{base.suffix}"), step)
        self.t.callbacks.on_checkpoint(self.run, step, path, reason)
        return path

    # ---- validation ---------------------------------------------------------------------------------------
    def validate(self, step: int) -> None:
        prompt = self.t.cfg.validation_prompt.strip()
        if not prompt:
            return
        every = sharding.every_process_samples(self.acc)  # FSDP, ZeRO-3: the weights' gathers are collectives
        if self.acc.is_main_process or every:
            with sharding.full_weights(self.acc, self.model):
                images = self.sample(prompt)
        if self.acc.is_main_process:
            folder = self.t.output_dir / VALIDATION_DIR
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for i, image in enumerate(images):
                path = folder / f"step-{step:08d}{'' if len(images) == 1 else f'-{i}'}.png"
                image.save(path)
                paths.append(path)
            self.result.validation_images.extend(images)
            self.result.validation_steps.extend([step] * len(images))
            self.t.callbacks.on_validation(self.run, step, images, paths)
        self.acc.wait_for_everyone()

    @torch.no_grad()
    def sample(self, prompt: str) -> list:
        from ..images import to_pil
        from ..pipeline import DeepGenPipeline

        cfg = self.t.cfg
        size = cfg.validation_size or cfg.resolution
        was_training = self.model.training
        self.model.eval()
        try:
            with self.acc.autocast():
                pipe = DeepGenPipeline(self.model)
                cond = pipe.encode([prompt], guidance=cfg.validation_cfg_scale > 1.0)
                x = pipe.sample(
                    cond,
                    size,
                    size,
                    num_steps=cfg.validation_num_steps,
                    cfg_scale=cfg.validation_cfg_scale,
                    seed=cfg.seed,
                )
                pixels = pipe.decode(x).float()
        finally:
            if was_training:
                self.model.train()
                self.model.vae.eval()
        return to_pil(pixels)

    # ---- export -------------------------------------------------------------------------------------------
    def _lora_wanted(self) -> bool:
        spec = self.t.spec
        if self.t.cfg.export_lora is None:
            return spec.has_lora
        return bool(self.t.cfg.export_lora)

    def lora_target(self) -> Path:
        path = self.t.cfg.export_lora_path
        return Path(path).expanduser() if path else self.t.output_dir / EXPORT_DIR / "deepgen_lora.safetensors"

    def include_scb(self) -> bool:
        spec = self.t.spec
        if self.t.cfg.export_lora_scb is None:
            return spec.trains_scb and spec.dit != "full"
        return bool(self.t.cfg.export_lora_scb)

    def write_lora(self, path: Path, step: int) -> Path:
        from .export import export_lora

        cfg, spec = self.t.cfg, self.t.spec
        meta = {
            "stage": cfg.stage,
            "steps": step,
            "trained": spec.to_dict(),
            "base_model": cfg.model,
            "dataset_sizes": self.datasets.sizes(),
            "resolution": cfg.resolution,
            "lr": cfg.lr,
            "complete": spec.dit != "full" and (self.include_scb() or not spec.trains_scb),
            **cfg.export_lora_metadata,
        }
        return export_lora(
            self.model,
            path,
            metadata=meta,
            scb_initial=self.scb_initial if self.include_scb() else None,
            dtype=cfg.export_torch_dtype,
        )

    def export(self, step: int) -> None:
        # under FSDP every process gathers the whole weights (collective); the main process writes the files
        with sharding.full_weights(self.acc, self.model):
            self._export(step)
        self.acc.wait_for_everyone()

    def _export(self, step: int) -> None:
        cfg = self.t.cfg
        paths: dict[str, Path] = {}
        if self.acc.is_main_process:
            if self._lora_wanted():
                if self.t.spec.dit == "full":
                    log.warning(
                        "the DiT trained in full: the LoRA file holds only the LoRA parts; the exported "
                        "checkpoint holds the whole model"
                    )
                paths["lora"] = self.result.lora_path = self.write_lora(self.lora_target(), step)
            if cfg.export_checkpoint:
                from .export import export_official_checkpoint

                target = (
                    Path(cfg.export_checkpoint_path).expanduser()
                    if cfg.export_checkpoint_path
                    else self.t.output_dir / EXPORT_DIR / "model.safetensors"
                )
                paths["checkpoint"] = self.result.checkpoint_path = export_official_checkpoint(
                    self.model,
                    target,
                    source=self.t.source,
                    dtype=cfg.export_torch_dtype,
                    metadata={"stage": str(cfg.stage), "steps": str(step)},
                )
            if paths:
                self.t.callbacks.on_export(self.run, paths)
