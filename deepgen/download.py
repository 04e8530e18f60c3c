"""`deepgen download`: the official files, fetched with huggingface_hub into a models folder.

Nothing in the library downloads on its own; this runs only when a user asks for it.
"""

from __future__ import annotations

from pathlib import Path

# (repo id, sub-folder of the models dir, allow patterns)
SOURCES = {
    "deepgen": ("deepgenteam/DeepGen-1.0", "deepgen/DeepGen-1.0", ["model.pt", "*.md", "*.json"]),
    "vlm": ("Qwen/Qwen2.5-VL-3B-Instruct", "text_encoders/Qwen2.5-VL-3B-Instruct", None),
    "diffusion": ("Skywork/UniPic2-SD3.5M-Kontext-2B", "diffusion_models/UniPic2-SD3.5M-Kontext-2B",
                  ["transformer/*", "vae/*", "scheduler/*", "*.json", "*.md"]),
    "diffusers": ("deepgenteam/DeepGen-1.0-diffusers", "deepgen/DeepGen-1.0-diffusers", None),
}


def download_release(models_dir: str | Path, what=("deepgen", "vlm", "diffusion")) -> list[Path]:
    from huggingface_hub import snapshot_download

    models_dir = Path(models_dir)
    paths = []
    for name in what:
        repo, subfolder, patterns = SOURCES[name]
        target = models_dir / subfolder
        snapshot_download(repo_id=repo, local_dir=str(target), allow_patterns=patterns)
        paths.append(target)
    return paths
