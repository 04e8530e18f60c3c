"""Loading DeepGen 1.0 from its release layouts, strictly, plus conversion to one fast-loading file."""

from .errors import CheckpointError
from .release import load_model, load_tokenizer
from .sources import ModelSource, detect_layout, resolve_source
from .state_dict_io import read_state_dict

__all__ = [
    "CheckpointError",
    "ModelSource",
    "detect_layout",
    "load_model",
    "load_tokenizer",
    "read_state_dict",
    "resolve_source",
]

from .convert import convert_checkpoint, convert_model  # noqa: E402

__all__ += ["convert_checkpoint", "convert_model"]
