"""The converted single-file format (`deepgen convert`): one safetensors file whose header carries the configs and
the tokenizer, so a whole DeepGen loads with one memory-mapped read.

A shared .safetensors file must be as safe to open as any other: its header is untrusted data. Everything in
it is checked before it is used (format and version first, then JSON, known keys, types and sane sizes), and
nothing in it ever becomes a path: the tokenizer files are a fixed allow-list, written by *our* names into a
private temporary folder that is removed right after the tokenizer is built.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path

from .errors import CheckpointError, format_keys

SINGLE_FILE_FORMAT = "deepgen-single"
FORMAT_VERSION = "1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
CONFIG_PARTS = ("vlm", "transformer", "vae", "scheduler", "connector")
REQUIRED_FIELDS = ("format", "format_version", "configs", "tokenizer_files")

# tokenizer_config.json entries that name files or remote code: dropped, so the folder's own files are used
_TOKENIZER_PATH_KEYS_SUFFIXES = ("_file", "_files")
_TOKENIZER_DROPPED_KEYS = ("auto_map", "name_or_path", "_name_or_path")
TOKENIZER_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend")
MAX_TOKENIZER_FILE_CHARS = 64 * 1024 * 1024

# Integer config fields above these values are refused before anything is built (a crafted header must not be
# able to allocate terabytes: the DiT's position table is pos_embed_max_size² x width, computed at build time).
MAX_SIDE_FIELDS = {"pos_embed_max_size": 1024, "sample_size": 1024}
MAX_INT_FIELD = 1 << 21  # the largest real field is the VLM's vocabulary (151 936) / max positions (128 000)
_SIZE_WORDS = ("size", "dim", "layers", "heads", "channels", "num_", "vocab", "positions", "patch")


def is_single_file(metadata: dict | None) -> bool:
    return (metadata or {}).get("format") == SINGLE_FILE_FORMAT


def parse_header(metadata: dict, source: str) -> tuple[dict, dict[str, str]]:
    """Validate a converted file's metadata; returns (configs by part, tokenizer files by allowed name)."""
    missing = [name for name in REQUIRED_FIELDS if name not in metadata]
    if metadata.get("format") != SINGLE_FILE_FORMAT:
        raise CheckpointError(
            f"{source} is not a file written by `deepgen convert` (format {metadata.get('format')!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: unsupported converted-file version {metadata.get('format_version')!r} "
            f"(this version reads {FORMAT_VERSION!r}); convert again with this version of "
            "ComfyUI-DeepGen"
        )
    if missing:
        raise CheckpointError(
            f"{source}: the header lacks {', '.join(missing)}; the file is damaged or was not "
            "written by `deepgen convert`: convert it again"
        )
    configs = _json_object(metadata["configs"], "configs", source)
    files = _json_object(metadata["tokenizer_files"], "tokenizer_files", source)
    unknown, absent = sorted(set(configs) - set(CONFIG_PARTS)), [p for p in CONFIG_PARTS if p not in configs]
    if unknown or absent:
        raise CheckpointError(
            f"{source}: header configs must be exactly {', '.join(CONFIG_PARTS)}"
            + (f"; unknown: {format_keys(unknown)}" if unknown else "")
            + (f"; missing: {', '.join(absent)}" if absent else "")
        )
    for part in CONFIG_PARTS:
        if not isinstance(configs[part], dict):
            raise CheckpointError(
                f"{source}: header config {part!r} is a {type(configs[part]).__name__}, not an object"
            )
        check_config_sizes(configs[part], f"{source}: config {part}")
    check_known_keys(configs, source)
    return configs, check_tokenizer_files(files, source)


def parse_fp8_parts(metadata: dict, source: str) -> list:
    """The optional `fp8_parts` field (`deepgen convert --dtype fp8`): a JSON list; its names and the tensors
    are checked against each other by `fp8.check_fp8_header` once the tensors are read."""
    if "fp8_parts" not in metadata:
        return []
    try:
        value = json.loads(metadata["fp8_parts"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: header field 'fp8_parts' is not valid JSON ({exc}); convert it again"
        ) from exc
    if not isinstance(value, list) or not value:
        raise CheckpointError(f"{source}: header field 'fp8_parts' must be a non-empty JSON list of part names")
    return value


def _json_object(text, field: str, source: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: header field {field!r} is not valid JSON ({exc}); the file is damaged: convert it again"
        ) from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: header field {field!r} must be a JSON object, not {type(value).__name__}")
    return value


def check_config_sizes(config: dict, where: str) -> None:
    """Refuse negative, non-integer or absurd sizes anywhere in a (nested) config."""
    for key, value in config.items():
        if isinstance(value, dict):
            check_config_sizes(value, f"{where}.{key}")
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            if key in MAX_SIDE_FIELDS and value is not None:
                raise CheckpointError(f"{where}: {key} must be a whole number, not {value!r}")
            continue
        limit = MAX_SIDE_FIELDS.get(key, MAX_INT_FIELD)
        if any(word in key for word in _SIZE_WORDS) and not 0 <= value <= limit:
            raise CheckpointError(f"{where}: {key} = {value} is outside 0..{limit}; the file is damaged or crafted")


def check_known_keys(configs: dict, source: str) -> None:
    """The DiT, VAE, scheduler and connector configs may only hold fields their classes take."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from ..model.connector import ConnectorConfig
    from ..model.dit import DeepGenTransformer2DModel

    private = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
    accepted = {
        "transformer": set(inspect.signature(DeepGenTransformer2DModel.__init__).parameters),
        "vae": set(inspect.signature(AutoencoderKL.__init__).parameters),
        "scheduler": set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters),
        "connector": set(ConnectorConfig.__dataclass_fields__),
    }
    for part, names in accepted.items():
        unknown = sorted(set(configs[part]) - names - private)
        if unknown:
            raise CheckpointError(
                f"{source}: config {part} has unknown fields {format_keys(unknown)}; the file "
                "is damaged or from another program"
            )
    if configs["vlm"].get("model_type") != "qwen2_5_vl":
        raise CheckpointError(
            f"{source}: config vlm is a {configs['vlm'].get('model_type')!r} model; DeepGen 1.0 "
            "uses Qwen2.5-VL (qwen2_5_vl)"
        )


def check_tokenizer_files(files: dict, source: str) -> dict[str, str]:
    """Only the allow-listed tokenizer files, each a string of sane length; anything else is refused by name."""
    strange = sorted(name for name in files if name not in TOKENIZER_FILES)
    if strange:
        raise CheckpointError(
            f"{source}: the header's tokenizer files include names that are not allowed: "
            f"{format_keys(repr(n) for n in strange)} (allowed: {', '.join(TOKENIZER_FILES)}). "
            "Nothing was written; do not use this file"
        )
    if "tokenizer.json" not in files:
        raise CheckpointError(f"{source}: the header has no tokenizer.json; convert the file again")
    for name, text in files.items():
        if not isinstance(text, str) or len(text) > MAX_TOKENIZER_FILE_CHARS:
            raise CheckpointError(f"{source}: tokenizer file {name!r} is not text of a sane size")
    return files


def safe_tokenizer_config(text: str, source: str) -> str:
    """tokenizer_config.json without entries that name files or remote code; the class must be a Qwen2 one."""
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{source}: tokenizer_config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: tokenizer_config.json must be a JSON object")
    cls = config.get("tokenizer_class")
    if cls is not None and cls not in TOKENIZER_CLASSES:
        raise CheckpointError(
            f"{source}: tokenizer class {cls!r} is not a Qwen2 tokenizer ({', '.join(TOKENIZER_CLASSES)})"
        )
    kept = {
        key: value
        for key, value in config.items()
        if key not in _TOKENIZER_DROPPED_KEYS and not key.endswith(_TOKENIZER_PATH_KEYS_SUFFIXES)
    }
    return json.dumps(kept)


def build_tokenizer(files: dict[str, str], source: str):
    """The tokenizer from checked header files: written under the allow-list's own names (never the header's)
    into a private temporary folder, loaded offline without remote code, and the folder removed."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="deepgen-tokenizer-") as tmp:
        for name in TOKENIZER_FILES:
            if name in files:
                text = safe_tokenizer_config(files[name], source) if name == "tokenizer_config.json" else files[name]
                Path(tmp, name).write_text(text, encoding="utf-8")
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - tokenizers and transformers raise many types for bad files
            raise CheckpointError(
                f"{source}: the tokenizer in the header cannot be built "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "convert the file again"
            ) from exc


def tokenizer_files(tokenizer) -> dict[str, str]:
    """The allow-listed files of a tokenizer, as text, for the header (`deepgen convert`)."""
    with tempfile.TemporaryDirectory(prefix="deepgen-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        return {
            name: Path(tmp, name).read_text(encoding="utf-8") for name in TOKENIZER_FILES if Path(tmp, name).is_file()
        }
