"""Key layouts: which release a state dict comes from, and how its names map onto DeepGenModel's.

Official `model.pt` keys (reference §4.2): `meta_queries`, `projector_{1,2,3}.*`, `connector.layers.*`,
`transformer.*` and `lmm.*lora*`. The LoRA keys use either the transformers >= 4.52 layout
(`lmm.model.language_model.*`, `lmm.model.visual.*`) or the <= 4.51 one (`lmm.model.*`, `lmm.visual.*`);
we normalise both to the module paths of the installed transformers (>= 4.52 layout).
"""

from __future__ import annotations

import re

import torch

from .errors import CheckpointError, format_keys

SCB_PREFIXES = ("meta_queries", "projector_1.", "projector_2.", "projector_3.", "connector.")
DIT_PREFIX = "transformer."
LMM_PREFIX = "lmm."
LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.")

_OLD_TEXT = re.compile(r"^model\.(layers|embed_tokens|norm)(\.|$)")


def group_keys(keys) -> dict[str, list[str]]:
    """Split checkpoint keys into scb / transformer / lora / lmm_other / unknown."""
    groups: dict[str, list[str]] = {"scb": [], "transformer": [], "lora": [], "lmm_other": [], "unknown": []}
    for key in keys:
        if key == "meta_queries" or key.startswith(SCB_PREFIXES[1:]):
            groups["scb"].append(key)
        elif key.startswith(DIT_PREFIX):
            groups["transformer"].append(key)
        elif key.startswith(LMM_PREFIX):
            groups["lora" if is_lora_key(key) else "lmm_other"].append(key)
        else:
            groups["unknown"].append(key)
    return groups


def is_lora_key(key: str) -> bool:
    return any(marker in key for marker in LORA_MARKERS) or key.endswith(
        (".lora_embedding_A.default", ".lora_embedding_B.default")
    )


def normalize_vlm_key(key: str) -> str:
    """An lmm key (without `lmm.`) in either transformers layout -> the >= 4.52 module path."""
    if key.startswith("visual."):
        return "model." + key
    if _OLD_TEXT.match(key):
        return "model.language_model." + key[len("model.") :]
    return key


def split_lora_key(key: str) -> tuple[str, str]:
    """`lmm.<module>.lora_A.default.weight` -> (normalised module path, 'A'|'B')."""
    body = key[len(LMM_PREFIX) :]
    match = re.match(r"^(.*)\.lora_(?:embedding_)?([AB])(?:\.default)?(?:\.weight)?$", body)
    if not match:
        raise CheckpointError(f"Unrecognised LoRA key {key!r}")
    return normalize_vlm_key(match.group(1)), match.group(2)


# Names the diffusers-format release (`connector/`) may use for the SCB tensors. The public repository
# does not document them, so we accept the plausible spellings and list anything else in the error.
_CONNECTOR_PATTERNS = [
    (re.compile(r"^(?:scb\.|model\.)?(meta_queries|projector_[123]\.(?:weight|bias))$"), r"\1"),
    (re.compile(r"^(?:scb\.|model\.)?(?:connector\.)?(?:encoder\.)?(layers\.\d+\..+)$"), r"connector.\1"),
]


def map_connector_keys(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    mapped, unknown = {}, []
    for key, value in state.items():
        for pattern, replacement in _CONNECTOR_PATTERNS:
            if pattern.match(key):
                mapped[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: unknown connector tensor names: {format_keys(unknown)}. Expected "
            "meta_queries, projector_{1,2,3}.* and connector layers.* (SigLIP-style names)."
        )
    return mapped


def check_state_dict(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str, optional: tuple[str, ...] = ()
) -> None:
    """Every key accounted for: raise one error naming missing, unexpected and wrongly shaped keys."""
    missing = [k for k in expected if k not in given and k not in optional]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in given
        if k in expected and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {format_keys(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} with the wrong shape: {format_keys(shapes, 6)}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))
