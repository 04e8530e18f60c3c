"""``deepgen train``: stages 1 and 2 (this package's SFTTrainer) and stage 3 (``deepgen.train.grpo``).

    deepgen train --stage 2 --config configs/train/stage2.toml --set lr=1e-4 --set max_steps=1000
    deepgen train --config configs/train/tiny.toml                 # stage from the file
    deepgen train --config run.toml --resume outputs/train/x/checkpoint-00001000
    accelerate launch --num_processes 8 -m deepgen train --config configs/train/stage2.toml

Console: a tqdm bar (loss, lr) and one line every ``log_every`` updates; ``output_dir/train_log.jsonl`` gets one
JSON line per update (loss, per-task losses, lr, grad norm, samples, timings).  Ctrl-C writes a resumable
checkpoint first (single process), then stops; run the same command again to continue (``resume = "auto"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

__all__ = ["add_train_parser", "cmd_train", "ConsoleCallback", "load_train_config", "main"]

TASK_SHORT = {"text2image": "t2i", "image2image": "edit"}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to the ``deepgen`` CLI's sub-parsers."""
    p = subparsers.add_parser(
        "train",
        help="train DeepGen: stage 1 (alignment), 2 (joint SFT, LoRA) or 3 (MR-GRPO)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config keys and presets: docs/training.md. Example configs: configs/train/*.toml.",
    )
    p.add_argument("--config", required=True, help="TOML (or JSON/YAML) config file")
    p.add_argument(
        "--stage",
        type=int,
        choices=(1, 2, 3),
        help="1 = alignment pre-training, 2 = joint SFT, 3 = MR-GRPO (default: the file's 'stage')",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (TOML value syntax: lr=5e-5, train_dit=lora, data=['a','b']); repeatable",
    )
    p.add_argument(
        "--resume",
        metavar="auto|no|PATH",
        help="auto: continue from output_dir's latest checkpoint; no: start fresh; or a checkpoint "
        "folder (default: the config's 'resume')",
    )
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    p.add_argument(
        "--validation-steps",
        type=int,
        default=None,
        help="sampling steps of validation images (= --set validation_num_steps=N; config default 30)",
    )
    p.add_argument(
        "--no-export",
        action="store_true",
        help="do not write export/deepgen_lora.safetensors and export/model.safetensors at the end "
        "(= --set export_lora=false --set export_checkpoint=false)",
    )
    p.add_argument(
        "--export-dtype",
        default=None,
        metavar="auto|fp32|bf16|fp16",
        help="dtype of the exported official checkpoint (= --set export_dtype=...; auto: as trained, fp32 masters)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the memory plan per GPU (weights, gradients, AdamW states, activations) and exit; "
        "builds the model on the meta device: nothing is loaded, no data or GPU needed",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="with --plan: the process (GPU) counts to plan for (default: 1 and 8)",
    )
    p.add_argument(
        "--sharding",
        choices=("none", "zero2", "zero3", "fsdp"),
        default="none",
        help="with --plan: none (DDP: all replicated), zero2 (gradients and optimizer states sharded), "
        "zero3 / fsdp (weights too); default none",
    )
    p.add_argument(
        "--accelerate-config",
        default=None,
        metavar="FILE",
        help="with --plan: take the sharding (FSDP, DeepSpeed ZeRO stage) and process count from an accelerate "
        "config file, e.g. configs/accelerate/zero3.yaml (--num-processes still wins)",
    )
    p.set_defaults(func=cmd_train)
    return p


def load_train_config(path: str, stage: int | None, overrides: list[str]):
    """The resolved TrainConfig: the file on its stage's preset, ``--stage`` if the file has none, overrides."""
    from .config import ConfigError, load_config, read_config_file

    file_path = Path(path)
    if not file_path.is_file():
        raise ConfigError(f"Config file {file_path} not found")
    values = read_config_file(file_path)
    overrides = list(overrides)
    if stage is not None:
        if "stage" in values and values["stage"] != stage:
            raise ConfigError(
                f"{file_path} is a stage-{values['stage']} config but --stage {stage} was given; "
                f"drop --stage or use a stage-{stage} config file ({SMALL_CONFIGS.get(stage, 'configs/train/')})"
            )
        if not any(o.split("=", 1)[0].strip() == "stage" for o in overrides):
            overrides.insert(0, f"stage={stage}")
    cfg = load_config(file_path, overrides)
    _warn_foreign_stage_keys(file_path, values, cfg.stage)
    return cfg


SMALL_CONFIGS = {1: "configs/train/stage1_tiny.toml", 2: "configs/train/tiny.toml"}


def _warn_foreign_stage_keys(path: Path, values: dict, stage: int) -> None:
    """``--set stage=N`` on a file of another stage: the file's own keys of what trains still apply (a stage-2
    file's ``train_dit = "full"`` keeps the DiT training under stage 1), so say which ones."""
    import warnings

    from .config import stage_preset

    if values.get("stage", 1) == stage:
        return
    keys = [
        k for k in ("train_dit", "vlm_lora", "train_meta_queries", "train_projectors", "train_connector") if k in values
    ]
    keys += [k for k in stage_preset(values.get("stage", 1)) if k in values and k not in keys and k != "stage"]
    if keys:
        warnings.warn(
            f"{path} is a stage-{values.get('stage', 1)} config run as stage {stage}: its own keys still apply "
            f"({', '.join(f'{k} = {values[k]!r}' for k in keys)}); for a stage-{stage} run use a stage-{stage} "
            f"config ({SMALL_CONFIGS.get(stage, 'configs/train/')}) or --set those keys too",
            stacklevel=3,
        )


class ConsoleCallback:
    """tqdm progress bar + a log line every ``log_every`` updates (main process only)."""

    def __init__(self, log_every: int = 10, stream=None):
        self.log_every = max(1, int(log_every))
        self.stream = stream or sys.stderr
        self.bar = None

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)

    # TrainCallback hooks (duck-typed so this module imports without torch)
    def on_train_start(self, run) -> None:
        if not run.is_main_process:
            return
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=run.total_steps,
                initial=run.start_step,
                desc=f"stage {run.stage}",
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )
        except Exception:  # noqa: BLE001 - no tqdm: log lines only
            self.bar = None
        where = f"resuming at step {run.start_step}" if run.start_step else "starting"
        self._print(
            f"[deepgen train] stage {run.stage}: {where}, {run.total_steps} steps, "
            f"{run.trainable_parameters:,} trainable parameters, {run.num_processes} process(es)"
            f"{'' if run.sharding == 'none' else ', sharded: ' + run.sharding}, output {run.output_dir}"
        )

    def check_interrupt(self) -> None:
        pass

    def on_step_end(self, run, info) -> None:
        if not run.is_main_process:
            return
        if self.bar is not None:
            self.bar.update(info.step - self.bar.n)
            self.bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", refresh=False)
        if info.step % self.log_every == 0 or info.step == info.total_steps:
            tasks = ", ".join(f"{TASK_SHORT.get(t, t)} {v:.4f}" for t, v in sorted(info.task_losses.items()))
            norm = f" grad {info.grad_norm:.3f}" if info.grad_norm is not None else ""
            if "val_loss" in info.extra:
                norm += f" val_loss {info.extra['val_loss']:.4f}"
            self._print(
                f"step {info.step}/{info.total_steps} loss {info.loss:.4f} ({tasks}) lr {info.lr:.3e}{norm} "
                f"{info.step_time:.2f} s/step"
            )

    def on_checkpoint(self, run, step, path, reason) -> None:
        if path is not None:
            self._print(f"checkpoint ({reason}) step {step}: {path}")

    def on_validation(self, run, step, images, paths) -> None:
        for path in paths:
            self._print(f"validation image step {step}: {path}")

    def on_export(self, run, paths) -> None:
        for kind, path in paths.items():
            self._print(f"exported {kind}: {path}")

    def on_interrupt(self, run, step, checkpoint, exc) -> None:
        if run.is_main_process:
            where = f"checkpoint {checkpoint}" if checkpoint else "the last checkpoint"
            self._print(f"interrupted at step {step}; {where} holds the state. Run the same command to resume.")

    def on_train_end(self, run, result) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_stage3(args) -> int:
    from .grpo.trainer import run_grpo_from_config_file

    overrides = list(args.overrides) + (["cpu=true"] if args.cpu else [])
    run_grpo_from_config_file(args.config, overrides, args.resume)
    return 0


def cmd_train(args) -> int:
    """Run ``deepgen train`` from parsed arguments; returns the exit status.

    Errors are raised (every user error is a ``deepgen.errors.DeepGenError``); ``deepgen.cli.main`` turns them
    into one ``error:`` line and exit status 2, on every rank of an ``accelerate launch``.
    """
    if getattr(args, "plan", False):
        return _print_plan(args)
    if args.stage == 3:
        return _run_stage3(args)
    from .config import read_config_file

    if args.stage is None and Path(args.config).is_file() and read_config_file(Path(args.config)).get("stage") == 3:
        return _run_stage3(args)  # a stage-3 (MR-GRPO) config file
    cfg = load_train_config(args.config, args.stage, _flag_overrides(args) + list(args.overrides))
    if args.resume:
        cfg = dataclasses.replace(cfg, resume=args.resume)
        cfg.validate()
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0

    from .trainer import SFTTrainer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # ConsoleCallback is a duck-typed TrainCallback (CallbackList accepts those), so this module imports without torch
    trainer = SFTTrainer(
        cfg,
        callbacks=[ConsoleCallback(cfg.log_every)],  # type: ignore[list-item]
        cpu=True if args.cpu else None,
    )
    trainer.run()
    return 0


def _print_plan(args) -> int:
    """``--plan``: the memory table for the config (any stage), without loading anything."""
    from ..errors import ConfigError
    from .plan import format_plan, plan_config_file, sharding_from_accelerate_config

    sharding, default_counts = args.sharding, [1, 8]
    if getattr(args, "accelerate_config", None):
        sharding, n = sharding_from_accelerate_config(args.accelerate_config)
        default_counts = [n]
        print(f"accelerate config {args.accelerate_config}: {n} process(es), sharding {sharding}")
    counts = args.num_processes or default_counts
    bad = [n for n in counts if n < 1]
    if bad:
        raise ConfigError(f"--num-processes must be ≥ 1 (got {bad[0]})")
    overrides = _flag_overrides(args) + list(args.overrides)
    plan = plan_config_file(args.config, overrides, args.stage)
    print(format_plan(plan, counts, sharding))
    return 0


def _flag_overrides(args) -> list[str]:
    """The stage 1-2 flags that are config keys, as ``key=value`` overrides (``--set`` comes after them)."""
    out = []
    if getattr(args, "validation_steps", None) is not None:
        out.append(f"validation_num_steps={args.validation_steps}")
    if getattr(args, "no_export", False):
        out += ["export_lora=false", "export_checkpoint=false"]
    if getattr(args, "export_dtype", None) is not None:
        out.append(f'export_dtype="{args.export_dtype}"')
    return out


def main(argv=None) -> int:
    """``python -m deepgen.train.cli ...`` = ``deepgen train ...``."""
    parser = argparse.ArgumentParser(prog="deepgen")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    from ..errors import run_cli

    return run_cli(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
