"""ComfyUI-DeepGen: DeepGen 1.0 nodes for ComfyUI.

ComfyUI imports this folder as a package named after the folder (custom_nodes/<folder>/__init__.py); it does
not put the folder on sys.path. The nodes import the bundled `deepgen` library by its top-level name, so the
folder is added to sys.path here (unless an installed `deepgen` package is already importable from it).
Importing registers the models/deepgen folder with ComfyUI and nothing else: no model is loaded, nothing is
downloaded or installed.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)  # appended, so ComfyUI's own top-level modules (e.g. `nodes`) keep priority

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes import comfy_services as _services

    _services.register_model_folders()
else:
    # Imported as a lone file, not as a package: pytest does this in a clone whose folder name is not a Python
    # name (custom_nodes/ComfyUI-DeepGen, as the README says). There is no ComfyUI to register with then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
