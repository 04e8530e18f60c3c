"""One entry point for every release layout: `load_model(...)` returns a ready DeepGenModel.

Layouts (see docs/loading.md):
- "official": the DeepGen checkpoint (`model.pt` or `.safetensors`: think tokens, SCB, DiT, VLM LoRA) plus
  the Qwen2.5-VL-3B-Instruct folder (`vlm=`) and the UniPic2 / SD3.5-M diffusers folder (`diffusion=`, with
  `transformer/`, `vae/`, `scheduler/`).
- "diffusers": the DeepGen-1.0-diffusers folder: `vlm/` (LoRA merged), `transformer/`, `vae/`, `connector/`,
  `scheduler/`, tokenizer.
- "single": one safetensors file written by `deepgen convert`, configs and tokenizer in its metadata.
Every tensor is accounted for; a mismatch raises CheckpointError naming the keys.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, cast

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from diffusers.models import embeddings
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from ..model import speed
from ..model.connector import ConnectorConfig
from ..model.deepgen import DeepGenModel
from ..model.dit import DeepGenTransformer2DModel
from . import fp8, single_file
from . import keys as K
from .errors import CheckpointError, format_keys
from .lora import attach_lora_adapter, collect_lora, lora_rank, merge_lora
from .state_dict_io import read_metadata, read_state_dict

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# Official connector heads: 32 at width 2048 (head_dim 64). Other widths need the head count given.
OFFICIAL_CONNECTOR = ConnectorConfig()
POS_EMBED = "pos_embed.pos_embed"  # the DiT's 2-D sin-cos position table (a persistent buffer)


def load_model(
    checkpoint: str | os.PathLike,
    vlm: str | os.PathLike | None = None,
    diffusion: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    lora: str = "merge",
    lora_alpha: float | None = None,
    allow_pretrain_checkpoint: bool = False,
    connector_config: dict | None = None,
    attn_implementation: str = "sdpa",
    weight_dtype: str = "default",
    progress: Progress | None = None,
    compile_dit: bool = False,
    sdpa_backend: str = "auto",
) -> DeepGenModel:
    """Load DeepGen 1.0 from any supported release layout (resolved by `deepgen.loading.sources`).

    vlm / diffusion: the base folders of the official layout; by default the ones next to the checkpoint.
    lora: "merge" (W + alpha/r·B·A, fastest at inference) or "peft" (a trainable PEFT adapter).
    lora_alpha: defaults to 2·rank (the release's r=64, alpha=128).
    allow_pretrain_checkpoint: accept a checkpoint without DiT and LoRA tensors (stage-1 output); the DiT
    then comes from `diffusion/transformer`.
    connector_config: overrides of ConnectorConfig (needed only for non-official widths, e.g. num_attention_heads;
    a `connector_config.json` next to the checkpoint is read).
    weight_dtype: "default" (everything in `dtype`) or "fp8_e4m3fn" ("fp8"): the DiT and the VLM text tower
    stored in float8_e4m3fn, each layer upcast to `dtype` for its forward (see `deepgen.loading.fp8`). A file
    written by `deepgen convert --dtype fp8` loads in fp8 whatever this says.
    compile_dit / sdpa_backend: DiT speed switches, off by default (`deepgen.model.speed`): torch.compile of each
    transformer block (compiled on the first forward), and "auto" / "flash" / "efficient" / "math" attention.
    """
    weight_dtype = fp8.normalize_weight_dtype(weight_dtype)
    speed.check_sdpa_backend(sdpa_backend)
    model = _load_on_cpu(
        checkpoint, vlm, diffusion, dtype, lora, lora_alpha, allow_pretrain_checkpoint, connector_config,
        attn_implementation, progress,
    )  # fmt: skip
    if weight_dtype == "fp8_e4m3fn":
        fp8.apply_fp8(model, dtype)  # on the CPU, so the device only ever holds the fp8 copy
    model = model.to(device).eval()
    speed.configure(model.transformer, compile=compile_dit, sdpa_backend=sdpa_backend)
    return model


def _load_on_cpu(
    checkpoint, vlm, diffusion, dtype, lora, lora_alpha, allow_pretrain_checkpoint, connector_config,
    attn_implementation, progress,
) -> DeepGenModel:  # fmt: skip
    from .sources import resolve_source

    if lora not in ("merge", "peft"):
        raise ValueError(f"lora must be 'merge' or 'peft', not {lora!r}")
    say = progress or (lambda message: None)
    source = resolve_source(checkpoint, vlm, diffusion)
    if source.layout == "tiny":
        from ..tiny import build_tiny_model

        return build_tiny_model(seed=source.seed, dtype=dtype)
    if source.layout == "demo":
        return _load_demo_file(Path(source.path_of("checkpoint")), dtype, attn_implementation, say)
    if source.layout == "single":
        return _load_single_file(Path(source.path_of("checkpoint")), dtype, attn_implementation, say)
    connector_config = {**(source.connector_config or {}), **(connector_config or {})} or None
    if source.layout == "diffusers":
        root = Path(source.path_of("checkpoint"))
        vlm_dir, diffusion_dir = root / "vlm", root
        say("reading connector")
        trained = K.map_connector_keys(_read_folder_tensors(root / "connector"), str(root / "connector"))
        connector_config = {**_folder_config(root / "connector"), **(connector_config or {})}
        dit_from_folder, lora_pairs = True, {}
    else:
        vlm_dir, diffusion_dir = Path(source.path_of("vlm")), Path(source.path_of("diffusion"))
        checkpoint_file = source.path_of("checkpoint")
        say("reading checkpoint")
        trained, _ = read_state_dict(checkpoint_file)
        trained, lora_pairs, dit_from_folder = _split_official(trained, checkpoint_file, allow_pretrain_checkpoint)

    say("loading VLM")
    tokenizer = load_tokenizer(vlm_dir)
    lmm = _load_vlm(vlm_dir, dtype, attn_implementation)
    if lora_pairs:
        say("applying VLM LoRA")
        rank = lora_rank(lora_pairs)
        alpha = lora_alpha if lora_alpha is not None else 2.0 * rank
        if lora == "merge":
            merge_lora(lmm, lora_pairs, alpha / rank)
        else:
            attach_lora_adapter(lmm, lora_pairs, alpha)

    say("loading DiT")
    transformer = _load_dit(diffusion_dir / "transformer", trained, dtype, from_folder=dit_from_folder)
    say("loading VAE")
    vae = AutoencoderKL.from_pretrained(str(diffusion_dir / "vae"), torch_dtype=dtype, local_files_only=True)
    scheduler_config = _scheduler_config(diffusion_dir / "scheduler")

    say("loading SCB")
    model = _assemble(
        lmm, tokenizer, transformer, vae, trained, scheduler_config, connector_config, dtype, str(checkpoint)
    )
    return model


# ---- pieces --------------------------------------------------------------------------------------------


def _split_official(state, source, allow_pretrain):
    groups = K.group_keys(state)
    if groups["unknown"] or groups["lmm_other"]:
        strange = groups["unknown"] + groups["lmm_other"]
        hint = (
            "This does not look like a DeepGen 1.0 checkpoint"
            if not groups["scb"]
            else "The checkpoint has tensors DeepGen does not use"
        )
        raise CheckpointError(f"{source}: {hint}: {len(strange)} unrecognised keys: {format_keys(strange)}")
    if not groups["scb"]:
        raise CheckpointError(
            f"{source}: no think-token/SCB tensors (meta_queries, projector_*, connector.*): "
            "this is not a DeepGen 1.0 checkpoint"
        )
    missing_parts = [name for name in ("transformer", "lora") if not groups[name]]
    if missing_parts and not allow_pretrain:
        raise CheckpointError(
            f"{source}: no {' and no '.join(missing_parts)} tensors. A pre-training (stage 1) "
            "checkpoint has neither; load it with allow_pretrain_checkpoint=True "
            "(the DiT then comes from the diffusion folder)"
        )
    if missing_parts:
        comes_from = {
            "transformer": "the DiT comes from the diffusion folder",
            "lora": "the VLM runs without the DeepGen LoRA",
        }
        log.warning(
            "%s has no %s tensors: %s",
            source,
            " and no ".join(missing_parts),
            "; ".join(comes_from[name] for name in missing_parts),
        )
    lora_pairs = collect_lora({k: state[k] for k in groups["lora"]})
    trained = {k: state[k] for k in groups["scb"] + groups["transformer"]}
    return trained, lora_pairs, not groups["transformer"]


def load_tokenizer(vlm_path):
    path = Path(vlm_path)
    has_files = (path / "tokenizer.json").is_file() or (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    )
    if not has_files:
        raise CheckpointError(
            f"The VLM folder {path} has no tokenizer files (tokenizer.json, or vocab.json + "
            "merges.txt). Copy them from Qwen/Qwen2.5-VL-3B-Instruct into that folder."
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _load_vlm(path, dtype, attn_implementation):
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a Qwen2.5-VL model folder (no config.json)")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type != "qwen2_5_vl":
        raise CheckpointError(f"{path} holds a {config.model_type!r} model; DeepGen 1.0 needs Qwen2.5-VL-3B-Instruct")
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )


def _load_dit(folder: Path, trained, dtype, from_folder: bool):
    if from_folder:
        return DeepGenTransformer2DModel.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    # diffusers annotates load_config / from_config with their return_unused_kwargs=True tuple forms as well;
    # with the defaults used here they return the plain dict / the model.
    config = cast(dict[str, Any], DeepGenTransformer2DModel.load_config(str(folder), local_files_only=True))
    transformer = empty_dit(config)
    given = {k[len(K.DIT_PREFIX) :]: v.to(dtype) for k, v in trained.items() if k.startswith(K.DIT_PREFIX)}
    # The 2-D sin-cos grid is deterministic; older checkpoints may omit it, so it may be computed here.
    K.check_state_dict(transformer.state_dict(), given, "The checkpoint's DiT (transformer.*)", optional=(POS_EMBED,))
    if POS_EMBED not in given:
        given[POS_EMBED] = sincos_table(transformer.pos_embed)
    transformer.load_state_dict(given, strict=True, assign=True)
    return transformer


def empty_dit(config: dict) -> DeepGenTransformer2DModel:
    """The DiT with every parameter and buffer on the meta device, to be filled by `load_state_dict(assign=True)`.

    Buffers are included: otherwise diffusers computes the (1, pos_embed_max_size², width) sin-cos table on the
    CPU (864 MB, seconds, at the real size) only for the checkpoint's copy to replace it. Every buffer of the DiT
    is persistent, so a strict load leaves nothing on meta."""
    with init_empty_weights(include_buffers=True):
        transformer = cast(DeepGenTransformer2DModel, DeepGenTransformer2DModel.from_config(config))
    transient = {name for name, _ in transformer.named_buffers()} - transformer.state_dict().keys()
    if transient:  # a diffusers change; a strict load would not fill these
        raise RuntimeError(f"DeepGen's DiT has non-persistent buffers the loader cannot fill: {sorted(transient)}")
    return transformer


def sincos_table(patch_embed: embeddings.PatchEmbed) -> torch.Tensor:
    """The `pos_embed` buffer diffusers' `PatchEmbed` builds (float32), computed from a meta-built one's fields."""
    num_positions, width = patch_embed.pos_embed.shape[1:]
    table = embeddings.get_2d_sincos_pos_embed(
        width,
        patch_embed.pos_embed_max_size or int(num_positions**0.5),
        base_size=patch_embed.base_size,
        interpolation_scale=patch_embed.interpolation_scale,
        output_type="pt",
    )
    return table.float().unsqueeze(0)


def _assemble(lmm, tokenizer, transformer, vae, trained, scheduler_config, connector_overrides, dtype, source):
    scb = {k: v for k, v in trained.items() if not k.startswith(K.DIT_PREFIX)}
    if "meta_queries" not in scb or "projector_1.weight" not in scb:
        raise CheckpointError(f"{source}: meta_queries / projector_1 missing, cannot size the SCB")
    connector_config = infer_connector_config(scb, connector_overrides)
    with init_empty_weights():
        model = DeepGenModel(
            lmm,
            tokenizer,
            transformer,
            vae,
            connector_config,
            num_queries=scb["meta_queries"].shape[0],
            scheduler_config=scheduler_config,
        )
    scb = {k: v.to(dtype) for k, v in scb.items()}
    own = {k: v for k, v in model.state_dict().items() if k.startswith(K.SCB_PREFIXES)}
    K.check_state_dict(own, scb, f"{source}: the think tokens and SCB")
    model.meta_queries = nn.Parameter(scb.pop("meta_queries"))
    for name in ("projector_1", "projector_2", "projector_3", "connector"):
        part = {k[len(name) + 1 :]: v for k, v in scb.items() if k.startswith(name + ".")}
        getattr(model, name).load_state_dict(part, strict=True, assign=True)
    return model


def infer_connector_config(scb: dict, overrides: dict | None = None) -> ConnectorConfig:
    """Sizes come from the tensors; the head count is the official 32 at width 2048, else must be given."""
    width = scb["projector_1.weight"].shape[0]
    layers = {int(k.split(".")[2]) for k in scb if k.startswith("connector.layers.")}
    fields = {
        "hidden_size": width,
        "num_hidden_layers": len(layers),
        "intermediate_size": scb["connector.layers.0.mlp.fc1.weight"].shape[0] if layers else 0,
    }
    overrides = dict(overrides or {})
    if "num_attention_heads" not in overrides:
        if width != OFFICIAL_CONNECTOR.hidden_size:
            raise CheckpointError(
                f"Connector width {width} is not the official 2048: pass connector_config={{'num_attention_heads': N}}"
            )
        overrides["num_attention_heads"] = OFFICIAL_CONNECTOR.num_attention_heads
    valid = ConnectorConfig.__dataclass_fields__
    return ConnectorConfig(**{**fields, **{k: v for k, v in overrides.items() if k in valid}})


def _scheduler_config(folder: Path) -> dict:
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise CheckpointError(f"No scheduler config at {path}; the diffusion folder needs scheduler/")
    return json.loads(path.read_text())


def _folder_config(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_folder_tensors(folder: Path) -> dict:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"No .safetensors files in {folder}")
    state = {}
    for file in files:
        state.update(read_state_dict(file)[0])
    return state


# ---- the single-file format (`deepgen convert`) ------------------------------------------------------


def _load_single_file(path: Path, dtype, attn_implementation, say) -> DeepGenModel:
    say("reading converted checkpoint")
    metadata = read_metadata(path)
    configs, files = single_file.parse_header(metadata, str(path))  # before any tensor is touched
    claimed = single_file.parse_fp8_parts(metadata, str(path))
    state, _ = read_state_dict(path)
    if not state:
        raise CheckpointError(f"{path} holds a converted-file header but no tensors; convert the model again")
    fp8_parts = fp8.check_fp8_header(claimed, state, str(path))
    tokenizer = single_file.build_tokenizer(files, str(path))
    return _build_whole(path, configs, state, tokenizer, fp8_parts, dtype, attn_implementation)


def _load_demo_file(path: Path, dtype, attn_implementation, say) -> DeepGenModel:
    from ..tokenizer import demo_tokenizer
    from . import demo_file

    say("reading the demo model")
    configs, embed_seed, default_size = demo_file.read_demo_header(read_metadata(path), str(path))
    state, _ = read_state_dict(path)
    state = demo_file.demo_state(configs, state, embed_seed, str(path))
    model = _build_whole(path, configs, state, demo_tokenizer(), [], dtype, attn_implementation)
    model.default_size = default_size
    # The demo never saw the official edit negative. Co-batched with it (as officially, pipeline.think), the
    # instruction is left-padded to the negative's ~60 tokens, and the pads reach SCB: its features move off what
    # the demo was trained on and its edits turn to noise. Its CFG negative is the empty prompt it learned from
    # caption dropout.
    model.edit_negative_prompt = ""
    return model


def _build_whole(path: Path, configs, state, tokenizer, fp8_parts, dtype, attn_implementation) -> DeepGenModel:
    """A DeepGenModel from a whole-model file's configs and tensors (converted or demo file)."""
    from diffusers import AutoencoderKL as VAE
    from transformers import Qwen2_5_VLConfig

    try:
        vlm_config = Qwen2_5_VLConfig.from_dict(configs["vlm"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: config vlm is not a valid Qwen2.5-VL config ({exc})") from exc
    vlm_config._attn_implementation = attn_implementation
    try:
        with init_empty_weights():
            lmm = AutoModelForImageTextToText.from_config(vlm_config, attn_implementation=attn_implementation)
            vae = VAE.from_config(configs["vae"])
        transformer = empty_dit(configs["transformer"])  # its pos_embed table comes from the file, as it is required
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: the configs in its header do not build a model ({type(exc).__name__}: "
            f"{exc}); convert the model again"
        ) from exc
    parts = {"lmm": lmm, "transformer": transformer, "vae": vae}
    for name, module in parts.items():
        given = {  # fp8 tensors stay fp8 (checked above: only in the header's fp8_parts)
            k[len(name) + 1 :]: v if v.dtype == fp8.FP8 else v.to(dtype)
            for k, v in state.items()
            if k.startswith(name + ".")
        }
        own = module.state_dict()
        tied = [k for k in own if k == "lm_head.weight" and k not in given and vlm_config.tie_word_embeddings]
        K.check_state_dict(own, given, f"{path}: {name}", optional=tuple(tied))
        module.load_state_dict(
            {**given, **{k: given["model.language_model.embed_tokens.weight"] for k in tied}}, strict=True, assign=True
        )
        if tied:  # one Parameter again, so a later .to() makes one copy, not two
            module.tie_weights()
    trained = {k: v for k, v in state.items() if not k.startswith(("lmm.", "vae."))}
    model = _assemble(
        lmm, tokenizer, transformer, vae, trained, configs["scheduler"], configs["connector"], dtype, str(path)
    )
    if fp8_parts:
        fp8.apply_fp8(model, dtype, parts=fp8_parts)
    fp8.check_all_cast(model, str(path))
    return model
