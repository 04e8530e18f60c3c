"""ComfyUI nodes of DeepGen 1.0: thin adapters over the `deepgen` library (classic V1 node interface).

Each module in NODE_MODULES exports NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS; adding a module is one
line. A module that fails to import is logged and skipped (IMPORT_ERRORS), so one broken optional dependency
does not take every node down with it. Importing this package loads no model, downloads nothing and does not
import torch; the heavy imports happen when a node runs.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

NODE_MODULES = (
    "loader",
    "encode",
    "sampler",
    "edit",
    "reward",
    "training",  # DeepGenTrainLoRA
    "train_rl",  # DeepGenTrainRL
    "lora_loader",  # DeepGenLoRALoader
    "speed",  # DeepGenSpeed
)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
IMPORT_ERRORS: dict[str, str] = {}

for _name in NODE_MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except Exception as _exc:  # keep the other nodes usable; the log says what is missing
        IMPORT_ERRORS[_name] = f"{type(_exc).__name__}: {_exc}"
        log.exception("DeepGen: could not import nodes.%s; its nodes are unavailable", _name)
        continue
    for _node_id, _cls in _module.NODE_CLASS_MAPPINGS.items():
        if _node_id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"DeepGen node id {_node_id} is defined twice (nodes.{_name})")
        NODE_CLASS_MAPPINGS[_node_id] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["IMPORT_ERRORS", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_MODULES"]
