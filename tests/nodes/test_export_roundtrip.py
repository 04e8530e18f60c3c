"""Every training export loads back where a user looks for it: the official-layout checkpoints of stages 1 and 2
through ``deepgen generate --checkpoint``, the LoRA files of stage 2 and stage 3 through ``deepgen generate
--lora`` and the DeepGenLoRALoader node, each trained for one step on the tiny release layout."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE.parents[1])):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from trainer_kit import assert_same_outputs, base_config, one_thread, outputs, stage3_values, write_dataset  # noqa: E402

from deepgen.cli import main  # noqa: E402
from deepgen.tiny import save_tiny_release  # noqa: E402
from deepgen.train.trainer import SFTTrainer  # noqa: E402

TINY_HEADS = "4"  # the tiny connector's head count (an export has no connector_config.json beside it)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One-step runs from the tiny release: stage 1 (SCB only), stage 2 (full DiT + VLM LoRA), stage 2 with a DiT
    LoRA, stage 3 with a LoRA policy; their exports and trained models."""
    root = tmp_path_factory.mktemp("exports")
    with one_thread():
        paths = save_tiny_release(root / "release")
        data = write_dataset(root / "data", n_t2i=2, n_edit=1)
        runs = {}

        def sft(name, stage, **kw):
            cfg = base_config(
                data,
                root / name,
                stage=stage,
                model=str(root / "release"),
                max_steps=1,
                lr=1e-2,
                task_pattern={"text2image": 1},
                **kw,
            )
            trainer = SFTTrainer(cfg, cpu=True)
            runs[name] = (trainer.run(), trainer.model)

        sft("stage1", 1)
        sft("stage2", 2, export_lora=False, vlm_lora_dropout=0.0)
        sft("stage2_dit_lora", 2, train_dit="lora", vlm_lora=False, export_checkpoint=False)
        runs["stage3"] = stage3(root, data)
    return paths, runs


def stage3(root: Path, data: Path):
    import deepgen.train.grpo.toy_rewards  # noqa: F401 - registers "brightness"
    from deepgen.train.grpo.run_config import stage3_config_from_dict
    from deepgen.train.grpo.trainer import GRPOTrainer

    prompts = root / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n", encoding="utf-8")
    weights = {"general": {"brightness": 1.0}}
    values = stage3_values(root / "stage3", str(prompts), model=str(root / "release"), category_weights=weights)
    cfg = stage3_config_from_dict({**values, "group_size": 2, "num_steps": 2, "max_steps": 1})
    trainer = GRPOTrainer(cfg).setup()
    trainer.train()
    return root / "stage3" / "lora.safetensors", trainer.model


def generate(paths, out: Path, *extra: str, checkpoint=None) -> int:
    argv = ["generate", "--checkpoint", str(checkpoint or paths["checkpoint"])]
    argv += ["--vlm", str(paths["vlm"]), "--diffusion", str(paths["diffusion"]), "--connector-heads", TINY_HEADS]
    argv += ["--dtype", "fp32", "--device", "cpu", "--prompt", "a red square", "--width", "32", "--height", "32"]
    argv += ["--steps", "1", "--cfg", "1", "--out", str(out), *extra]
    with one_thread():
        return main(argv)


def test_stage1_and_stage2_checkpoints_load_with_generate(exports, tmp_path, caplog):
    paths, runs = exports
    stage1, stage2 = runs["stage1"][0].checkpoint_path, runs["stage2"][0].checkpoint_path
    with caplog.at_level(logging.WARNING, logger="deepgen"):
        assert generate(paths, tmp_path / "s1.png", checkpoint=stage1) == 0
    said = [r.getMessage() for r in caplog.records if "has no" in r.getMessage()]
    # a stage-1 export holds the DiT it trained with, but no VLM LoRA: one line says so
    assert len(said) == 1 and said[0].endswith("has no lora tensors: the VLM runs without the DeepGen LoRA")
    assert generate(paths, tmp_path / "s2.png", checkpoint=stage2) == 0
    assert (tmp_path / "s1.png").is_file() and (tmp_path / "s2.png").is_file()


def test_lora_files_load_with_generate_and_the_lora_loader_node(exports, tmp_path, monkeypatch):
    from deepgen.loading import load_model
    from nodes.lora_loader import DeepGenLoRALoader
    from nodes.model_handle import DeepGenModelHandle

    paths, runs = exports
    loras = {"stage2_dit_lora": runs["stage2_dit_lora"][0].lora_path, "stage3": runs["stage3"][0]}
    # the release (no VLM LoRA tensors) as the base; both LoRAs stacked with strengths
    extra = ["--lora", f"{loras['stage2_dit_lora']}:0.5", "--lora", str(loras["stage3"])]
    assert generate(paths, tmp_path / "lora.png", *extra) == 0 and (tmp_path / "lora.png").is_file()
    # the node: strength 1 on the release model gives the trained model's outputs
    folder = tmp_path / "models" / "loras" / "deepgen"
    folder.mkdir(parents=True)
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path / "models"))
    with one_thread():
        base = load_model(
            paths["checkpoint"], paths["vlm"], paths["diffusion"], dtype=torch.float32, allow_pretrain_checkpoint=True
        )
        handle = DeepGenModelHandle(base, name="release", memory_mode="keep_all_on_gpu")
        for name, path in loras.items():
            shutil.copy(path, folder / f"{name}.safetensors")
            (patched,) = DeepGenLoRALoader().load(handle, f"deepgen/{name}.safetensors", 1.0)
            patched.activate()
            assert_same_outputs(outputs(patched.model), outputs(runs[name][1]))
        handle.activate()


def test_a_lora_for_another_model_size_is_one_clear_error(exports, tmp_path, capsys):
    paths, _ = exports
    wrong = tmp_path / "other_size.safetensors"
    q = "transformer.transformer_blocks.0.attn.to_q"
    save_file({f"{q}.lora_A.weight": torch.zeros(2, 999), f"{q}.lora_B.weight": torch.zeros(7, 2)}, str(wrong))
    assert generate(paths, tmp_path / "x.png", "--lora", str(wrong)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "trained for another model size" in err[-1]
    assert not (tmp_path / "x.png").exists()
    assert generate(paths, tmp_path / "x.png", "--lora", str(tmp_path / "missing.safetensors")) == 2
    assert "does not exist" in capsys.readouterr().err
