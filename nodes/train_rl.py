"""DeepGenTrainRL: reinforcement learning (MR-GRPO, stage 3) from the graph: prompts and reward weights in, a DiT
LoRA out, with live per-reward curves.

A thin adapter over the headless stage-3 trainer (deepgen.train.grpo.GRPOTrainer) with the 1-GPU LoRA recipe
(configs/train/stage3_1gpu_lora.toml): the node writes the prompts and the config into the run folder and runs
the same trainer ``deepgen train --stage 3 --config <run>/stage3_config.json`` runs, so both give the same numbers.
As DeepGenTrainLoRA: the cached base model is left as it was (the LoRA is added for the run and removed after),
an interrupt checkpoints the last complete step and the next queue resumes there, the LoRA goes to
``output/loras/deepgen/<lora_name>.safetensors`` and the run to ``output/deepgen_training/<lora_name>/``.
"""

from __future__ import annotations

import json
import math
import shutil

from deepgen.errors import DeepGenError, InputError

from . import comfy_services as cs
from . import reward_sources as rs
from . import train_rl_inputs as inputs
from .training_files import check_lora_name, load_adapter_cached, lora_output_dir, resolve_dataset, run_dir, start_over
from .training_run import TrainingNodeCallback, detach_inference_tensors, to_image_batch
from .types import DEEPGEN_MODEL, IMAGE, MAX_SEED, category, display_name

REWARDS_EVENT = "deepgen1.train_rewards"
DONE_EVENT = "deepgen1.train_done"


def _num(value) -> float | None:
    """JSON-safe: NaN (a reward without a value this step) travels as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def reward_point(rec: dict, names) -> dict:
    """One step of the chart from a stage-3 log record: per-reward mean/std, the weighted total, KL."""
    return {
        "step": rec["step"],
        "rewards": {n: {"mean": _num(rec[f"reward/{n}/mean"]), "std": _num(rec[f"reward/{n}/std"])} for n in names},
        "total": {"mean": _num(rec["reward/weighted/mean"]), "std": _num(rec["reward/weighted/std"])},
        "kl": _num(rec.get("kl", 0.0)),
        "lr": _num(rec["lr"]),
    }


def curves(records: list[dict], names) -> dict:
    """The run's per-step curves (all steps, resumed runs included) and its evaluations."""
    train = [r for r in records if not r.get("eval")]
    points = [reward_point(r, names) for r in train]
    return {
        "steps": [p["step"] for p in points],
        "rewards": {n: {k: [p["rewards"][n][k] for p in points] for k in ("mean", "std")} for n in names},
        "total": {k: [p["total"][k] for p in points] for k in ("mean", "std")},
        "kl": [p["kl"] for p in points],
        "policy_loss": [_num(r.get("policy_loss", 0.0)) for r in train],
        "eval": [
            {"step": r["step"], **{n: _num(r[f"eval/{n}/mean"]) for n in [*names, "weighted"]}}
            for r in records
            if r.get("eval")
        ],
    }


class RLNodeCallback(TrainingNodeCallback):
    """The stage-3 trainer's callbacks → ComfyUI: progress bar, interrupt, per-reward chart events, eval previews."""

    def __init__(self, node_id, total_steps: int):
        super().__init__(node_id, total_steps, "DeepGen RL")
        self.eval_images: list = []

    def _send(self, point: dict, total_steps: int) -> None:
        cs.send_event(REWARDS_EVENT, {"node": self.node_id, "total_steps": total_steps, **point})

    def on_train_start(self, run) -> None:
        from deepgen.train.grpo.output import read_log

        self.bar.update_absolute(run.start_step, run.total_steps)
        if run.start_step:  # a resumed run: the chart gets the steps done before first
            for rec in read_log(run.output_dir):
                if not rec.get("eval") and rec["step"] <= run.start_step:
                    self._send(reward_point(rec, self._names(rec)), run.total_steps)
        where = f"resuming at step {run.start_step}" if run.start_step else "starting"
        cs.send_progress_text(f"DeepGen RL: {where} ({run.trainable_parameters:,} LoRA parameters)", self.node_id)

    @staticmethod
    def _names(rec: dict) -> list[str]:
        return sorted({k.split("/")[1] for k in rec if k.startswith("reward/") and k.endswith("/mean")} - {"weighted"})

    def on_step_end(self, run, info) -> None:
        rec = info.extra
        point = reward_point(rec, self._names(rec))
        self._send(point, info.total_steps)
        self.bar.update_absolute(info.step, info.total_steps)
        total = point["total"]["mean"]
        cs.send_progress_text(
            f"step {info.step}/{info.total_steps} · reward {'n/a' if total is None else f'{total:.4f}'} "
            f"· kl {point['kl'] or 0.0:.2e}",
            self.node_id,
        )

    def on_validation(self, run, step, images, paths) -> None:
        self.eval_images.extend(images)  # the node's eval_images output
        super().on_validation(run, step, images, paths)  # and shown on the node as they are made


def _int(tooltip: str, default: int, lo: int, hi: int, step: int = 1) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip})


def _float(tooltip: str, default: float, lo: float, hi: float, step: float) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "round": False, "tooltip": tooltip})


RESOLUTION_TIP = (
    "Image size of rollouts and evaluations (square). 0: the model's own size (512 for DeepGen 1.0, 64 for the demo "
    "model, which draws texture at 512)."
)


class DeepGenTrainRL:
    DESCRIPTION = (
        "Reinforcement learning of DeepGen 1.0 from rewards (MR-GRPO, the paper's stage 3) with a DiT LoRA: for each "
        "step it draws prompts_per_step prompts, makes group_size images of each, scores them with the rewards and "
        "moves the LoRA towards the better images of each group, held near the start by a KL term. Defaults are the "
        "1-GPU recipe (configs/train/stage3_1gpu_lora.toml). The same settings give the same run as "
        "`deepgen train --stage 3 --config output/deepgen_training/<lora_name>/stage3_config.json`."
    )
    CATEGORY = category("training")
    RETURN_TYPES = (DEEPGEN_MODEL, "STRING", "STRING", IMAGE)
    RETURN_NAMES = ("model", "lora_path", "curves", "eval_images")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied at strength 1.",
        "Path of the saved LoRA file (load it again with DeepGenLoRALoader).",
        "Per-step curves as JSON: steps, per-reward mean/std, weighted total, KL, policy loss, evaluations.",
        "Evaluation images of the eval prompts: before training and every eval_every steps.",
    )
    FUNCTION = "train"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader (trained on top of its LoRAs)."}),
                "prompts": (
                    "STRING",
                    {
                        "default": "a red apple on a wooden table\na lighthouse on a cliff at dusk",
                        "multiline": True,
                        "tooltip": (
                            "Training prompts, one per line. 'category<TAB>prompt' puts a line in a category with its "
                            "own reward weights (e.g. text_rendering)."
                        ),
                    },
                ),
                "rewards": (
                    "STRING",
                    {
                        "default": "brightness=1",
                        "multiline": True,
                        "tooltip": (
                            "Reward weights, 'name=weight, ...': clip (clip_model), ocr, preference (judge: "
                            "models/deepgen/unifiedreward-think, judge_url or this model's VLM), brightness / "
                            "saturation (toys, no model). A line 'text_rendering: ocr=0.7, clip=0.1, "
                            "preference=0.2' sets one category's weights."
                        ),
                    },
                ),
                "lora_name": (
                    "STRING",
                    {
                        "default": "my_deepgen_rl",
                        "tooltip": "output/loras/deepgen/<name>.safetensors; run in output/deepgen_training/<name>/.",
                    },
                ),
                "steps": _int(
                    "Trainer steps (one rollout + one update each), resumed steps included.", 1500, 1, 100000
                ),
                "learning_rate": _float("AdamW learning rate of the LoRA (1-GPU recipe 3e-5).", 3e-5, 1e-7, 1e-1, 1e-6),
                "rank": _int("LoRA rank of the DiT attention (alpha = 2 x rank).", 32, 1, 256),
                "group_size": _int("Images per prompt (G); advantages compare the images of one prompt.", 4, 2, 64),
                "prompts_per_step": _int("Prompts per step (each makes group_size images).", 4, 1, 256),
                "kl_beta": _float("KL penalty β towards the start model (official 5e-7).", 5e-7, 0.0, 1.0, 1e-7),
                "sft_lambda": _float(
                    "SFT-Aux λ: weight of a supervised loss on sft_images (official 1e-4; needs sft_images).",
                    1e-4,
                    0.0,
                    1.0,
                    1e-5,
                ),
                "sft_images": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": (
                            "Folder of images with .txt captions (or a .jsonl list) in ComfyUI's input folder for "
                            "the SFT-Aux term. Empty: no SFT-Aux."
                        ),
                    },
                ),
                "eval_prompts": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "Evaluation prompts (one per line, as prompts). Empty: the first training prompt.",
                    },
                ),
                "save_every": _int("Steps between resumable checkpoints (0: only at the end).", 50, 0, 100000),
                "eval_every": _int("Steps between evaluations (0: only before training).", 50, 0, 100000),
                "resume": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Continue the run of the same lora_name from its last checkpoint."},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 42,
                        "min": 0,
                        "max": MAX_SEED,
                        "control_after_generate": False,
                        "tooltip": "Seed of the prompt draws, noise and LoRA init (fixed: resume needs the same).",
                    },
                ),
                "resolution": _int(RESOLUTION_TIP, 0, 0, 2048, 32),
                "sampling_steps": _int("Sampling steps of each rollout and evaluation (1-GPU recipe 25).", 25, 2, 200),
            },
            "optional": {
                "prompts_file": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": (
                            "A prompt file in ComfyUI's input folder, added to prompts: .txt (one per line), .jsonl "
                            '({"prompt": ..., "category": ...} per line) or .json, as deepgen train --stage 3 reads.'
                        ),
                    },
                ),
                "judge_url": (
                    "STRING",
                    {"default": "", "tooltip": "URL of a preference judge server (empty: the local judge folder)."},
                ),
                "clip_model": (
                    rs.clip_choices(),
                    {
                        "default": rs.AUTO,
                        "tooltip": (
                            "CLIP ViT-L/14 for the clip reward: a transformers folder in models/deepgen (auto: "
                            "models/deepgen/clip) or a clip_vision/ file with both towers (openai/clip-vit-large-"
                            "patch14's model.safetensors; ComfyUI's own CLIP tokenizer is used with it)."
                        ),
                    },
                ),
                "judge": (
                    rs.JUDGE_SOURCES,
                    {
                        "default": rs.AUTO,
                        "tooltip": (
                            "Preference judge: local folder (models/deepgen/unifiedreward-think), judge_url (a judge "
                            "server), or this model's VLM (DeepGen's own Qwen2.5-VL-3B as a pairwise judge: no extra "
                            "memory, but not a trained reward model). auto: judge_url when set, else the folder."
                        ),
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(
        cls,
        lora_name=None,
        rewards=None,
        prompts=None,
        judge_url=None,
        group_size=None,
        prompts_file=None,
        clip_model=None,
        judge=None,
    ):
        # clip_model and judge are checked here, not by ComfyUI's list check: a name saved in a workflow must still
        # resolve inside the model folders, and the message says what is missing
        if lora_name is not None and (error := check_lora_name(lora_name)):
            return error
        try:
            if prompts is not None:
                inputs.training_prompts(prompts, prompts_file or "")
            if rewards is not None:
                default, own = inputs.parse_reward_weights(rewards)
                names = set(default) | {n for w in own.values() for n in w}
                if problem := inputs.reward_problem(names, judge_url or "", clip_model or rs.AUTO, judge or rs.AUTO):
                    return problem
        except DeepGenError as exc:  # bad text, and a missing, outside or unreadable prompts_file
            return str(exc)
        if group_size is not None and group_size < 2:
            return "group_size must be ≥ 2: the advantages compare the images of one prompt"
        return True

    def train(
        self,
        model,
        prompts,
        rewards,
        lora_name,
        steps,
        learning_rate,
        rank,
        group_size,
        prompts_per_step,
        kl_beta,
        sft_lambda,
        sft_images,
        eval_prompts,
        save_every,
        eval_every,
        resume,
        seed,
        resolution,
        sampling_steps,
        prompts_file="",
        judge_url="",
        clip_model=rs.AUTO,
        judge=rs.AUTO,
        unique_id=None,
    ):
        import torch

        from deepgen.train.checkpointing import check_output_dir_writable
        from deepgen.train.grpo.output import read_log
        from deepgen.train.grpo.run_config import stage3_config_from_dict
        from deepgen.train.grpo.trainer import GRPOTrainer
        from deepgen.train.runtime import preserve_model

        error = self.VALIDATE_INPUTS(
            lora_name, rewards, prompts, judge_url, group_size, prompts_file, clip_model, judge
        )
        if error is not True:
            raise InputError(error)
        lora_name = lora_name.strip()
        handle = model
        lines = inputs.training_prompts(prompts, prompts_file)
        evals = inputs.parse_prompt_lines(eval_prompts, "eval_prompts") if eval_prompts.strip() else lines[:1]
        default, own = inputs.parse_reward_weights(rewards)
        weights = inputs.category_weights(lines + evals, default, own)
        names = sorted({n for w in weights.values() for n in w})
        sft = str(resolve_dataset(sft_images)) if sft_images.strip() and sft_lambda > 0 else ""
        lora_dir, run = lora_output_dir(), run_dir(lora_name)
        check_output_dir_writable(lora_dir)
        check_output_dir_writable(run.parent)
        if not resume:
            start_over(run, lora_name)
        device = torch.device(cs.torch_device())
        values = inputs.stage3_values(
            model=inputs.model_keys(handle),
            run=run,
            prompts_file=inputs.write_prompt_file(run / inputs.PROMPTS_FILE, lines),
            eval_file=inputs.write_prompt_file(run / inputs.EVAL_PROMPTS_FILE, evals),
            weights=weights,
            rewards=inputs.reward_settings(names, judge_url, clip_model, judge),
            steps=steps,
            learning_rate=learning_rate,
            rank=rank,
            group_size=group_size,
            prompts_per_step=prompts_per_step,
            kl_beta=kl_beta,
            sft_lambda=sft_lambda,
            sft_data=sft,
            save_every=save_every,
            eval_every=eval_every,
            seed=seed,
            resolution=resolution or handle.pipe.default_size,  # 0: the size the model draws at (the demo: 64)
            sampling_steps=sampling_steps,
            resume=resume,
            cpu=device.type == "cpu",
        )
        (run / inputs.CONFIG_FILE).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
        cfg = stage3_config_from_dict(values, source="DeepGenTrainRL")
        callback = RLNodeCallback(unique_id, steps)
        try:
            with handle.loras_merged() as net, torch.inference_mode(False), torch.enable_grad():
                detach_inference_tensors(net)
                cs.free_memory(3 * sum(p.numel() * p.element_size() for p in net.parameters()), device)
                net.to(device)
                with preserve_model(net):
                    GRPOTrainer(cfg, model=net, callbacks=[callback]).setup().train()
        finally:
            cs.soft_empty_cache()
        lora_path = lora_dir / f"{lora_name}.safetensors"
        shutil.copyfile(run / "lora.safetensors", lora_path)
        cs.send_event(DONE_EVENT, {"node": callback.node_id, "lora_path": str(lora_path)})
        trained = handle.with_loras([(load_adapter_cached(str(lora_path)), 1.0)])
        result = json.dumps(curves(read_log(run), names))
        images = to_image_batch(callback.eval_images).to(cs.intermediate_device())
        return (trained, str(lora_path), result, images)


NODE_CLASS_MAPPINGS = {"DeepGenTrainRL": DeepGenTrainRL}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenTrainRL": display_name("DeepGen Train RL (rewards)")}
