"""`deepgen download`: the official files, fetched with huggingface_hub into a models folder.

Nothing in the library downloads on its own; this runs only when a user asks for it.

Without a network it fails within seconds, naming the host it tried: before anything else the hub host
(``HF_ENDPOINT`` if set, else huggingface.co; through the proxy that is set, if any) must accept a TCP
connection within :data:`CONNECT_TIMEOUT` seconds, and huggingface_hub's own connection errors are turned
into the same one-line :class:`~deepgen.errors.ResourceError`.

Where files go: ``models_dir`` is the user's choice; each repository goes to a sub-folder fixed here
(:data:`SOURCES`), never one named by the download.  The file names inside a repository are joined to that
folder by huggingface_hub (``snapshot_download(local_dir=...)``); recent versions (``_validate_relative_filename``)
refuse a name that is absolute or holds ``..``, and the Hub's git storage cannot hold such names anyway, so a
repository cannot make us write outside ``models_dir``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ResourceError
from .net import CONNECT_TIMEOUT, tcp_probe

__all__ = ["SOURCES", "hub_endpoint", "check_hub_reachable", "download_release"]

# (repo id, sub-folder of the models dir, allow patterns)
SOURCES = {
    "deepgen": ("deepgenteam/DeepGen-1.0", "deepgen/DeepGen-1.0", ["model.pt", "*.md", "*.json"]),
    "vlm": ("Qwen/Qwen2.5-VL-3B-Instruct", "text_encoders/Qwen2.5-VL-3B-Instruct", None),
    "diffusion": (
        "Skywork/UniPic2-SD3.5M-Kontext-2B",
        "diffusion_models/UniPic2-SD3.5M-Kontext-2B",
        ["transformer/*", "vae/*", "scheduler/*", "*.json", "*.md"],
    ),
    "diffusers": ("deepgenteam/DeepGen-1.0-diffusers", "deepgen/DeepGen-1.0-diffusers", None),
}

_DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub address huggingface_hub uses: ``HF_ENDPOINT`` if set, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or _DEFAULT_ENDPOINT


def check_hub_reachable(timeout: float = CONNECT_TIMEOUT) -> str:
    """Raise :class:`ResourceError` naming the hub host unless it accepts a connection within ``timeout`` s;
    returns the endpoint."""
    endpoint = hub_endpoint()
    try:
        tcp_probe(endpoint, timeout)
    except ResourceError as e:
        raise ResourceError(
            f"cannot reach {e}: check your network or proxy, or set HF_ENDPOINT to a mirror; nothing was downloaded"
        ) from None
    return endpoint


def _is_network_error(exc: BaseException) -> bool:
    """huggingface_hub's (and its HTTP client's) ways of saying "no connection", whatever the version."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectError",
        "ConnectTimeout",
        "TimeoutException",
        "NetworkError",
        "ProxyError",
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
    }:
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror))


def download_release(models_dir: str | Path, what=("deepgen", "vlm", "diffusion")) -> list[Path]:
    from huggingface_hub import snapshot_download

    models_dir = Path(models_dir)
    unknown = [name for name in what if name not in SOURCES]
    if unknown:
        from .errors import ConfigError

        raise ConfigError(f"unknown download {', '.join(map(repr, unknown))}; choose from {', '.join(SOURCES)}")
    offline = (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes", "on")
    endpoint = hub_endpoint() if offline else check_hub_reachable()  # offline: huggingface_hub's local files
    paths: list[Path] = []
    for name in what:
        repo, subfolder, patterns = SOURCES[name]
        target = models_dir / subfolder  # from the table above, never from the download
        try:
            snapshot_download(repo_id=repo, local_dir=str(target), allow_patterns=patterns)
        except Exception as e:  # noqa: BLE001 - map the network ones, let the rest through
            if _is_network_error(e):
                done = f"; finished before it: {', '.join(str(p) for p in paths)}" if paths else ""
                reason = " ".join(str(e).split())[:200] or type(e).__name__
                raise ResourceError(
                    f"cannot reach {urlsplit(endpoint).netloc} while downloading {repo} ({reason}): check your "
                    f"network or proxy, or set HF_ENDPOINT to a mirror; run the same command again to continue"
                    f"{done}"
                ) from e
            raise
        paths.append(target)
    return paths
