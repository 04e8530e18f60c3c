"""The library's layers point one way (docs/design.md): a module imports only from its own layer or lower ones,
and `deepgen/` never imports ComfyUI or the nodes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; the first dotted part below `deepgen.` names the place
LAYERS = [
    {"errors", "paths", "constants", "sizes", "devices", "net", "images", "tokenizer", "assets", "demo_world"},
    {"model"},
    {"tiny"},
    {"loading", "lora"},
    {"pipeline", "think", "comfy_latents"},
    {"rewards"},
    {"train"},
    {"download", "cli", "__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved against `package`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names.update([module] + [f"{module}.{alias.name}" for alias in node.names])
            elif node.module:
                names.add(node.module)
    return names


def place(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "deepgen" and len(parts) > 1 else None


def test_every_module_has_a_layer():
    places = {
        p.relative_to(ROOT / "deepgen").parts[0].removesuffix(".py")
        for p in (ROOT / "deepgen").rglob("*.py")
        if p.name != "__init__.py" or p.parent != ROOT / "deepgen"
    }
    assert places <= set(LAYER_OF), sorted(places - set(LAYER_OF))


def test_imports_point_down_and_never_at_comfyui():
    wrong = []
    for path in (ROOT / "deepgen").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        here = place(module)
        for name in imported_modules(path, package):
            top = name.split(".")[0]
            if top in ("comfy", "folder_paths", "server", "execution", "nodes", "comfy_extras", "comfy_api"):
                wrong.append(f"{module} imports ComfyUI's {name}")
            there = place(name)
            if here is None or there is None or there not in LAYER_OF:
                continue
            if LAYER_OF[there] > LAYER_OF[here]:
                wrong.append(f"{module} (layer {LAYER_OF[here]}) imports {name} (layer {LAYER_OF[there]})")
    assert not wrong, "\n".join(sorted(wrong))
