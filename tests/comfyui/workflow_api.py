"""UI-format workflow files -> ComfyUI's API prompt format, using the live server's /object_info specs.

The conversion rules are tests/nodes/workflow_harness.py's (widget values by position over the widget inputs in
schema order, control_after_generate values skipped, links as [source id, slot], widgets converted to linked
inputs taking the link, muted/bypassed and UI-only nodes dropped); here each node's spec comes from the real
server instead of the Python classes, so core nodes are checked against the ComfyUI that runs them.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_HARNESS_DIR = str(REPO / "tests" / "nodes")
if _HARNESS_DIR not in sys.path:
    sys.path.append(_HARNESS_DIR)

import workflow_harness as harness  # noqa: E402  (tests/nodes: pure Python, no ComfyUI needed)


class ServedNode:
    """What the harness needs of a node class (INPUT_TYPES, RETURN_TYPES, OUTPUT_NODE), from /object_info."""

    def __init__(self, name: str, info: dict):
        self.__name__ = name
        self._inputs = {k: v for k, v in info["input"].items() if k in ("required", "optional")}
        self.RETURN_TYPES = tuple(info["output"])
        self.OUTPUT_NODE = bool(info.get("output_node"))

    def INPUT_TYPES(self) -> dict:  # noqa: N802 - ComfyUI's name
        return self._inputs


def served_classes(object_info: dict) -> dict:
    return {name: ServedNode(name, info) for name, info in object_info.items()}


def extra_widget_values(object_info: dict) -> dict:
    """UI-only widgets the front end adds after the inputs: an `image_upload` input gets an 'upload' button whose
    saved value is "image"."""
    out = {}
    for name, info in object_info.items():
        for spec in info["input"].get("required", {}).values():
            if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("image_upload"):
                out[name] = ["image"]
    return out


def to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a UI workflow; raises harness.WorkflowError on an unknown node or a bad widget list."""
    unknown = sorted({n["type"] for n in workflow["nodes"]} - set(object_info) - harness.UI_ONLY)
    if unknown:
        raise harness.WorkflowError(f"the server has no node types {unknown}")
    return harness.ui_to_api(workflow, served_classes(object_info), extra_widget_values(object_info))


def set_inputs(prompt: dict, class_type: str, /, **values) -> None:
    """Override constant inputs of every node of a type (linked inputs are left alone)."""
    for node in prompt.values():
        if node["class_type"] != class_type:
            continue
        for name, value in values.items():
            current = node["inputs"].get(name)
            if name in node["inputs"] and not harness._is_link(current):
                node["inputs"][name] = value
