"""Runs tests/comfyui/native in a child pytest process.

Those tests import ComfyUI in-process, and ComfyUI's top-level `nodes.py` shares its name with this repository's
`nodes/` package, which test_real_server.py imports: one process cannot hold both, so the native tests get their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_native_model_and_vae_in_comfyui(comfyui_dir):
    env = {**os.environ, "DEEPGEN_COMFYUI_DIR": str(comfyui_dir)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(HERE / "native")]
    cmd += ["-c", str(HERE / "native" / "pytest.ini"), str(HERE / "native")]
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
