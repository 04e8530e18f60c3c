"""A real ComfyUI server for the tests: start, talk to, measure and stop it.

`ComfyServer.start()` runs `main.py --cpu` on a free loopback port with a temporary `--base-directory` whose
`custom_nodes/` links to this repository, and waits for `/object_info`. `run()` opens the websocket first (progress
and results arrive on it only), queues an API-format prompt and collects the messages until the prompt ends in
`execution_success`, `execution_error` or `execution_interrupted`. The server's output goes to a log file; its
tail is attached to every failure. The websocket client is aiohttp's, which ComfyUI itself requires.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


class ServerError(AssertionError):
    """A server-side failure, with the tail of the server's log in the message."""


class PromptRejected(ServerError):
    def __init__(self, body: dict, log_tail: str):
        self.body = body
        super().__init__(f"POST /prompt refused the prompt: {json.dumps(body, indent=1)[:4000]}\n{log_tail}")


@dataclass
class RunResult:
    prompt_id: str
    status: str  # success | error | interrupted
    seconds: float
    messages: list[dict] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict]:
        return [m["data"] for m in self.messages if m.get("type") == kind]

    @property
    def error(self) -> dict | None:
        errors = self.of_type("execution_error")
        return errors[0] if errors else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: Path, repo: Path = REPO) -> Path:
    """ComfyUI's --base-directory: custom_nodes/ (with a link to this repo), input/, output/, temp/, models/."""
    for name in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / name).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "ComfyUI-DeepGen"
    if not link.exists():
        link.symlink_to(repo, target_is_directory=True)
    return base


class ComfyServer:
    def __init__(
        self,
        comfyui_dir: Path,
        base_dir: Path,
        *,
        python: str = sys.executable,
        extra_args: tuple[str, ...] = (),
        env: dict | None = None,
    ):
        self.comfyui_dir = Path(comfyui_dir)
        self.base_dir = make_base_directory(Path(base_dir))
        self.python = python
        self.extra_args = tuple(extra_args)
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"
        self.start_seconds = 0.0
        self.client_id = uuid.uuid4().hex

    # ---- life cycle ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> float:
        """Start the server and wait until /object_info answers; returns the seconds it took."""
        self.port = free_port()
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--database-url",
            f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",  # the default lives in the ComfyUI tree
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} while starting\n{self.log_tail()}")
            try:
                self.get_json("/object_info/SaveImage", timeout=5)
                break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ServerError(f"ComfyUI did not answer /object_info within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.5)
        self.start_seconds = time.monotonic() - t0
        return self.start_seconds

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- log -------------------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"---- last {lines} lines of the ComfyUI log ({self.log_path}) ----\n{tail}"

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None, timeout: float = 60.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return raw

    def get_json(self, path: str, timeout: float = 60.0):
        return json.loads(self._request(path, timeout=timeout))

    def get_bytes(self, path: str, timeout: float = 60.0) -> bytes:
        return self._request(path, timeout=timeout)

    def post(self, path: str, body: dict, timeout: float = 60.0) -> bytes:
        return self._request(path, body, timeout=timeout)

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def history(self, prompt_id: str, timeout: float = 30.0) -> dict:
        """The prompt's history entry. The server stores it just after it sends execution_success, so wait."""
        t0 = time.monotonic()
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None or time.monotonic() - t0 > timeout:
                return entry or {}
            time.sleep(0.2)

    def rss(self) -> int:
        """Resident memory of the server process (bytes)."""
        import psutil

        assert self.proc is not None, "the server is not running"
        return psutil.Process(self.proc.pid).memory_info().rss

    # ---- prompts ---------------------------------------------------------------------------------------------
    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id, "extra_data": extra_data or {}}
        try:
            answer = json.loads(self.post("/prompt", body))
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
            except ValueError:
                detail = {"status": exc.code}
            raise PromptRejected(detail, self.log_tail()) from None
        return answer["prompt_id"]

    def run(
        self,
        prompt: dict,
        *,
        timeout: float = 600.0,
        on_message: Callable[[dict], None] | None = None,
        extra_data: dict | None = None,
    ) -> RunResult:
        """Queue `prompt` and wait for its end; every JSON message for it is kept (and passed to on_message)."""
        return asyncio.run(self._run(prompt, timeout, on_message, extra_data))

    async def _run(self, prompt, timeout, on_message, extra_data) -> RunResult:
        import aiohttp

        ws_url = f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            t0 = time.monotonic()
            prompt_id = await asyncio.to_thread(self.queue, prompt, extra_data)
            messages: list[dict] = []
            while True:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")
                try:
                    msg = await ws.receive(timeout=left)
                except asyncio.TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSING):
                    raise ServerError(f"the websocket closed while prompt {prompt_id} ran\n{self.log_tail()}")
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                message = json.loads(msg.data)
                data = message.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                message["t"] = time.monotonic() - t0
                messages.append(message)
                if on_message is not None:
                    await asyncio.to_thread(on_message, message)
                kind = message.get("type")
                if kind in END_EVENTS and data.get("prompt_id") == prompt_id:
                    status = kind.removeprefix("execution_")
                    return RunResult(prompt_id, status, time.monotonic() - t0, messages)


def wait_for_rss(server: ComfyServer, below: int, timeout: float = 30.0) -> int:
    """Poll the server's RSS until it is below `below` bytes or `timeout` passes; returns the last reading."""
    t0 = time.monotonic()
    while True:
        rss = server.rss()
        if rss < below or time.monotonic() - t0 > timeout:
            return rss
        time.sleep(0.5)
