"""Fixtures for the tests in a real ComfyUI (this folder is its own pytest project; see pytest.ini).

- `comfyui_dir`: the ComfyUI source tree (comfy_source.locate). Missing, or a Python without ComfyUI's
  requirements: the tests SKIP with the reason on a user's clone, and FAIL when the `CI` variable is set.
- `server` (session): one ComfyUI started with `main.py --cpu`, this repo linked into custom_nodes/, demo input
  images in input/ and `extra_models_dir` registered for the `deepgen` folder through --extra-model-paths-config.
- `timings` (session): name -> seconds, `memory_mb` (session): name -> MB; both printed at the end of the run.
Sub-folders (e.g. native/) may add their own conftest and reuse these.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import comfy_source  # noqa: E402
from server_kit import REPO, ComfyServer  # noqa: E402

# what the test process needs (the server runs with the same interpreter)
NEEDED_MODULES = ("aiohttp", "psutil", "torch", "torchvision", "PIL", "numpy", "yaml")
_TIMINGS: dict[str, float] = {}
_MEMORY_MB: dict[str, float] = {}


def unavailable(reason: str):
    """Skip on a user's clone; fail under CI, where the real-ComfyUI tests must always run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the real-ComfyUI tests never skip there)", pytrace=False)
    pytest.skip(reason)


# in-process ComfyUI tests: run in a child process by test_native_in_own_process.py
collect_ignore = ["native"]


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        unavailable(
            f"{sys.executable} lacks ComfyUI's requirements ({', '.join(missing)}): run these tests with "
            "ComfyUI's virtual environment"
        )
    try:
        return comfy_source.locate()
    except comfy_source.Missing as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() raises


@pytest.fixture(scope="session")
def timings():
    return _TIMINGS


@pytest.fixture(scope="session")
def memory_mb():
    """name -> MB measured (printed at the end of the run)."""
    return _MEMORY_MB


@pytest.fixture(scope="session")
def extra_models_dir(tmp_path_factory) -> Path:
    """A model root outside the server's base directory; its deepgen/ folder is registered for `deepgen`."""
    root = tmp_path_factory.mktemp("extra-models")
    (root / "deepgen").mkdir()
    return root


def _demo_inputs(input_dir: Path) -> None:
    """What the shipped workflows read: input/example.png and input/deepgen_lora_dataset/ (captioned images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(input_dir / "example.png")
    data = input_dir / "deepgen_lora_dataset"
    data.mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("a noisy square", encoding="utf-8")


@pytest.fixture(scope="session")
def server(comfyui_dir, extra_models_dir, tmp_path_factory, timings):
    base = tmp_path_factory.mktemp("comfy-base")
    config = base / "extra_model_paths.yaml"
    config.write_text(f"deepgen_tests:\n  base_path: {extra_models_dir}\n  deepgen: deepgen/\n", encoding="utf-8")
    srv = ComfyServer(comfyui_dir, base, extra_args=("--extra-model-paths-config", str(config)))
    _demo_inputs(srv.base_dir / "input")
    try:
        timings["server start"] = srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    srv = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(srv, ComfyServer):
        report.sections.append(("ComfyUI server log", srv.log_tail(80)))
    return report


def pytest_terminal_summary(terminalreporter):
    if _TIMINGS:
        terminalreporter.section("real ComfyUI timings (s)")
        for name, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.2f}  {name}")
    if _MEMORY_MB:
        terminalreporter.section("real ComfyUI memory (MB)")
        for name, mb in _MEMORY_MB.items():
            terminalreporter.write_line(f"{mb:8.1f}  {name}")


__all__ = ["REPO", "unavailable"]
