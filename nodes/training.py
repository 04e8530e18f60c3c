"""DeepGenTrainLoRA: fine-tune DeepGen on a folder of captioned images, inside ComfyUI (DeepGenLoRALoader, in
lora_loader.py, applies the result).

Both are thin adapters over the headless trainer (deepgen.train.trainer.SFTTrainer, stage-2 recipe) and the
LoRA files it exports (deepgen.train.export).  The cached base model is never changed for good: training adds
PEFT adapters to it and removes them afterwards (runtime.preserve_model puts back anything trained in place),
and the returned DEEPGEN_MODEL is a new handle that patches the exported LoRA onto the shared weights only
while the model manager has that handle's weights loaded (DeepGenModelHandle.with_loras: patches on clones of
the model's patchers).

Files: LoRAs go to ComfyUI's ``output/loras/deepgen/`` (listed by LoRA pickers after a refresh; outside
ComfyUI the first ``loras`` model folder + ``deepgen/``); resumable training checkpoints to
``output/deepgen_training/<lora_name>/`` (outside ComfyUI: ``$DEEPGEN_OUTPUT_DIR``, default ``./output``).
"""

from __future__ import annotations

import os
import warnings

from deepgen.errors import InputError

from . import comfy_services as cs
from .training_files import (
    check_lora_name,
    load_adapter_cached,
    lora_output_dir,
    resolve_dataset,
    run_dir,
    start_over,
)
from .training_run import TrainingNodeCallback, detach_inference_tensors, to_image_batch
from .types import DEEPGEN_MODEL, IMAGE, MAX_SEED, category, display_name

LOSS_MAP = "LOSS_MAP"  # ComfyUI core's loss history type ({"loss": [floats]}), read by "Plot Loss Graph"


# ---- progress, interrupt and loss events -----------------------------------------------------------------


class NodeCallback(TrainingNodeCallback):
    """The trainer's callbacks → ComfyUI: progress bar, interrupt button, loss chart events, status text."""

    def __init__(self, node_id, total_steps: int):
        super().__init__(node_id, total_steps, "DeepGen train")
        self.losses: list[float] = []
        self.task_losses: dict[str, list] = {}
        self.steps: list[int] = []
        self.val_losses: list[tuple[int, float]] = []  # (step, val_loss) every val_loss_every steps

    def on_train_start(self, run) -> None:
        self.bar.update_absolute(run.start_step, run.total_steps)
        where = f"resuming at step {run.start_step}" if run.start_step else "starting"
        cs.send_progress_text(
            f"DeepGen train: {where} ({run.trainable_parameters:,} trainable parameters)", self.node_id
        )

    def on_step_end(self, run, info) -> None:
        self.steps.append(info.step)
        self.losses.append(info.loss)
        val_loss = info.extra.get("val_loss")
        if val_loss is not None:  # the fixed-noise validation loss: a second series of the chart
            self.val_losses.append((info.step, val_loss))
            self._send_loss(info, "val_loss", val_loss)
        for task, loss in sorted(info.task_losses.items()):
            self.task_losses.setdefault(task, []).append(loss)
            self._send_loss(info, task, loss)
        self.bar.update_absolute(info.step, info.total_steps)
        cs.send_progress_text(f"step {info.step}/{info.total_steps} · loss {info.loss:.4f}", self.node_id)

    def _send_loss(self, info, task: str, loss: float) -> None:
        event = {"node": self.node_id, "step": info.step, "total_steps": info.total_steps, "loss": loss}
        cs.send_event("deepgen1.train_loss", {**event, "task": task, "lr": info.lr})


# ---- DeepGenTrainLoRA ----------------------------------------------------------------------------------------


class DeepGenTrainLoRA:
    DESCRIPTION = (
        "Fine-tunes DeepGen 1.0 on your images (a folder of images with same-named .txt captions, or an official "
        ".json/.jsonl list, edits included) and saves a LoRA to output/loras/deepgen/. Defaults suit a style or "
        "subject LoRA of 10-200 images on a 24 GB GPU: a rank-16 LoRA on the DiT's attention, learning rate 1e-4, "
        "500 steps, batch 1, 512 px, gradient checkpointing. Training resumes after an interrupt (resume on). "
        "The output model has the LoRA applied; the cached base model is not changed."
    )
    CATEGORY = category("training")
    RETURN_TYPES = (DEEPGEN_MODEL, "STRING", LOSS_MAP, IMAGE)
    RETURN_NAMES = ("model", "lora_path", "loss", "validation_images")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied at strength 1.",
        "Path of the saved LoRA file (load it again with DeepGenLoRALoader).",
        "Loss per step ({'loss': [...]}, as ComfyUI's Train LoRA node), for Plot Loss Graph.",
        "Validation images: one per save point and one at the end.",
    )
    FUNCTION = "train"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    DEEPGEN_MODEL,
                    {"tooltip": "The model from DeepGenLoader (trained on top of any LoRA it already carries)."},
                ),
                "dataset": (
                    "STRING",
                    {
                        "default": "deepgen_lora_dataset",
                        "tooltip": (
                            "Folder of images with same-named .txt captions (cat.png + cat.txt), or a .json/.jsonl list in the "
                            "official formats (edits too), inside ComfyUI's input folder (a name relative to it)."
                        ),
                    },
                ),
                "lora_name": (
                    "STRING",
                    {
                        "default": "my_deepgen_lora",
                        "tooltip": (
                            "File name of the LoRA (output/loras/deepgen/<name>.safetensors) and of its training run "
                            "(output/deepgen_training/<name>/)."
                        ),
                    },
                ),
                "steps": (
                    "INT",
                    {
                        "default": 500,
                        "min": 1,
                        "max": 100000,
                        "tooltip": (
                            "Optimizer steps in total (with resume: including the steps already done). About 20-50 per "
                            "training image is a good start."
                        ),
                    },
                ),
                "learning_rate": (
                    "FLOAT",
                    {
                        "default": 1e-4,
                        "min": 1e-7,
                        "max": 1e-2,
                        "step": 1e-5,
                        "round": 1e-7,
                        "tooltip": "Peak learning rate (1 % warm-up, then cosine to 0). 1e-4 "
                        "suits LoRAs; lower it if images fall apart.",
                    },
                ),
                "rank": (
                    "INT",
                    {
                        "default": 16,
                        "min": 1,
                        "max": 256,
                        "tooltip": (
                            "LoRA rank: 8-32 for a style or subject. Alpha = rank for the DiT LoRA, 2 x rank for the VLM "
                            "LoRA (the official ratio)."
                        ),
                    },
                ),
                "train_dit_lora": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": (
                            "LoRA on the DiT's attention projections: learns the look (style, subject). The usual choice."
                        ),
                    },
                ),
                "train_vlm_lora": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": (
                            "LoRA on the Qwen2.5-VL language model, as the official fine-tune: learns new words and prompt "
                            "understanding. More memory."
                        ),
                    },
                ),
                "train_connector": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": (
                            "Also train the think tokens, projectors and connector (the bridge from VLM to DiT), stored in "
                            "the LoRA file as weight differences (large: about the bridge's size)."
                        ),
                    },
                ),
                "validation_prompt": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": (
                            "Prompt of the validation images made at each save and at the end. Empty: the first caption of "
                            "the dataset."
                        ),
                    },
                ),
                "save_every": (
                    "INT",
                    {
                        "default": 100,
                        "min": 0,
                        "max": 100000,
                        "tooltip": (
                            "Steps between resumable checkpoints, LoRA snapshots (<name>_<step>_steps.safetensors) and "
                            "validation images. 0: only at the end."
                        ),
                    },
                ),
                "resume": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": (
                            "Continue the run of the same lora_name from its last checkpoint (after an interrupt, or with "
                            "more steps). Off: start over (the old run folder is kept, renamed)."
                        ),
                    },
                ),
                # No control_after_generate: a training seed that changes on every queue breaks resume.
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "control_after_generate": False,
                        "tooltip": "Seed of the data order, noise and LoRA init.",
                    },
                ),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per step."}),
                "resolution": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 2048,
                        "step": 32,
                        "tooltip": (
                            "Training size: each image is resized to about resolution² pixels, keeping its aspect ratio. "
                            "0: the model's own size (512 for DeepGen 1.0, 64 for the demo model); the validation "
                            "images are drawn at it too."
                        ),
                    },
                ),
                "gradient_checkpointing": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": ("Recompute activations in the backward pass: much less memory, about 30 % slower."),
                    },
                ),
                "validation_steps": (
                    "INT",
                    {"default": 20, "min": 1, "max": 200, "tooltip": ("Sampling steps of the validation images.")},
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name=None, rank=None, train_dit_lora=None, train_vlm_lora=None, train_connector=None):
        if lora_name is not None:
            error = check_lora_name(lora_name)
            if error:
                return error
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            return f"rank must be a whole number ≥ 1 (got {rank!r}); a rank-0 LoRA learns nothing"
        toggles = (train_dit_lora, train_vlm_lora, train_connector)
        if all(t is not None for t in toggles) and not any(toggles):
            return "nothing to train: switch on train_dit_lora, train_vlm_lora or train_connector"
        return True

    @classmethod
    def IS_CHANGED(cls, dataset="", **_):
        try:
            root = resolve_dataset(dataset)
        except (OSError, ValueError) as exc:
            return f"missing:{exc}"
        stamp = []
        for base, _dirs, files in os.walk(root) if root.is_dir() else [(str(root.parent), [], [root.name])]:
            for name in sorted(files):
                st = os.stat(os.path.join(base, name))
                stamp.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(stamp)

    def train(
        self,
        model,
        dataset,
        lora_name,
        steps,
        learning_rate,
        rank,
        train_dit_lora,
        train_vlm_lora,
        train_connector,
        validation_prompt,
        save_every,
        resume,
        seed,
        batch_size=1,
        resolution=0,
        gradient_checkpointing=True,
        validation_steps=20,
        unique_id=None,
    ):
        import torch

        from deepgen.train.checkpointing import CheckpointError, check_output_dir_writable
        from deepgen.train.config import TrainConfig
        from deepgen.train.data import load_datasets
        from deepgen.train.runtime import preserve_model
        from deepgen.train.trainer import SFTTrainer

        error = self.VALIDATE_INPUTS(lora_name, rank, train_dit_lora, train_vlm_lora, train_connector)
        if error is not True:
            raise InputError(error)
        lora_name = lora_name.strip()
        handle = model
        data_path = resolve_dataset(dataset)
        lora_dir, runs = lora_output_dir(), run_dir(lora_name)
        check_output_dir_writable(lora_dir)
        check_output_dir_writable(runs.parent)
        if not resume:
            start_over(runs, lora_name)
        resolution = resolution or handle.pipe.default_size  # 0: the size the model draws at (the demo: 64)
        datasets = load_datasets([data_path], resolution=resolution, verify="header")
        prompt = (validation_prompt or "").strip() or _first_caption(datasets) or "a photo"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="grad_accumulation .* is not a multiple")
            cfg = TrainConfig.for_stage(
                2,
                model=handle.name or "comfyui",
                data=[str(data_path)],
                resolution=resolution,
                task_pattern=(
                    {"image2image": 1, "text2image": 2} if datasets.sizes()["image2image"] else {"text2image": 1}
                ),
                caption_dropout=0.1,
                num_workers=0,
                micro_batch_size=batch_size,
                grad_accumulation=1,
                max_steps=steps,
                lr=learning_rate,
                warmup_ratio=0.01,
                mixed_precision="auto",
                gradient_checkpointing=gradient_checkpointing,
                output_dir=str(runs),
                save_every=save_every if save_every < steps else 0,
                keep_last=2,
                resume="auto" if resume else "no",
                log_every=1,
                val_loss_every=max(1, steps // 20),  # about 20 points of the chart's val_loss series
                validation_prompt=prompt,
                validation_every=save_every if 0 < save_every < steps else 0,
                seed=seed,
                train_meta_queries=train_connector,
                train_projectors=train_connector,
                train_connector=train_connector,
                train_dit="lora" if train_dit_lora else "frozen",
                dit_lora_rank=rank,
                dit_lora_alpha=float(rank),
                vlm_lora=train_vlm_lora,
                vlm_lora_rank=rank,
                vlm_lora_alpha=2.0 * rank,
                vlm_lora_dropout=0.05,
                validation_num_steps=validation_steps,
                strict_resume_data=False,
                export_lora=True,
                export_lora_path=str(lora_dir / f"{lora_name}.safetensors"),
                export_lora_scb=train_connector,
                save_lora_every_checkpoint=True,
                export_checkpoint=False,
                export_dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(handle.dtype, "auto"),
                export_lora_metadata={
                    "trained_with": "DeepGenTrainLoRA",
                    "lora_name": lora_name,
                    "base_model": handle.name,
                },
            )

        device = torch.device(cs.torch_device())
        callback = NodeCallback(unique_id, steps)
        scb = ("meta_queries", "projector_1.", "projector_2.", "projector_3.", "connector.") if train_connector else ()
        try:
            # train on top of the LoRAs this handle carries, merged into the plain model (the manager lets go of it)
            with handle.loras_merged() as net, torch.inference_mode(False), torch.enable_grad():
                detach_inference_tensors(net)
                cs.free_memory(3 * sum(p.numel() * p.element_size() for p in net.parameters()), device)
                net.to(device)
                with preserve_model(net, restore_values=scb):
                    trainer = SFTTrainer(
                        cfg, model=net, callbacks=[callback], device=device, cpu=device.type == "cpu", datasets=datasets
                    )
                    try:
                        result = trainer.run()
                    except CheckpointError as exc:
                        raise CheckpointError(
                            f"{exc} Cannot resume the run in {runs}: switch resume off, or choose "
                            "another lora_name, to train with these settings."
                        ) from exc
        finally:
            cs.soft_empty_cache()
        lora_path = str(result.lora_path)
        cs.send_event("deepgen1.train_done", {"node": callback.node_id, "lora_path": lora_path})
        adapter = load_adapter_cached(lora_path)
        trained = handle.with_loras([(adapter, 1.0)])
        loss = {
            "loss": [h["loss"] for h in result.history],
            "steps": [h["step"] for h in result.history],
            **{f"loss_{t}": v for t, v in callback.task_losses.items()},
            "val_loss": [v for _, v in callback.val_losses],
            "val_loss_steps": [step for step, _ in callback.val_losses],
        }
        images = to_image_batch(result.validation_images).to(cs.intermediate_device())
        return (trained, lora_path, loss, images)


def _first_caption(datasets) -> str | None:
    for row in getattr(datasets.text2image, "rows", []):
        if getattr(row, "caption", None):
            return row.caption
    for row in getattr(datasets.image2image, "rows", []):
        if getattr(row, "instruction", None):
            return row.instruction
    return None


# ---- DeepGenLoRALoader ---------------------------------------------------------------------------------------


NODE_CLASS_MAPPINGS = {"DeepGenTrainLoRA": DeepGenTrainLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenTrainLoRA": display_name("DeepGen Train LoRA")}
