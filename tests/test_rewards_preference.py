"""Pairwise preference reward: parsing, win-rate math, seeded pair order, a real local
OpenAI-compatible HTTP judge, and a tiny random Qwen2.5-VL judge loaded from disk."""

import base64
import io
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen.rewards import (
    PROMPT_TEMPLATE,
    EndpointJudge,
    PreferenceReward,
    QwenVLJudge,
    RewardModelNotFound,
    pair_plan,
    parse_preference,
    win_rates,
)

QWEN_TINY = Path(__file__).parent / "fixtures" / "deepgen-official-tiny" / "Qwen2.5-VL-tiny"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run far faster single-threaded on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gray(v, size=32):
    return Image.new("RGB", (size, size), (v, v, v))


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, want",
    [
        ("<think>Image 2 looks sharper.</think>\n<answer>Image 1 is better</answer>", 1),
        ("<answer>Image 2 is better</answer>", 2),
        ("<answer> image 2 IS BETTER. </answer>", 2),
        ("<think>Image 1 is better at first sight</think><answer>Image 2 is better</answer>", 2),
        ("<answer>Image 1 is better</answer> ... <answer>Image 2 is better</answer>", 2),  # last tag
        ("<answer>Image 1 is better", 1),  # truncated closing tag
        ("<answer>2</answer>", 2),
        ("<answer>Image 1</answer>", 1),
        ("<answer>Both images are equally good.</answer>", 0),
        ("<answer>It is a tie.</answer>", 0),
        ("<answer>I cannot tell</answer>", None),
        ("<answer>Image 1 is better. Image 2 is better.</answer>", None),  # conflicting
        ("Image 1 is better", 1),
        ("**Image 2** is better.", 2),
        ("After comparing, Image 1 is clearly better than Image 2.", 1),
        ("Image 2 is not better.", None),
        ("Image 1 is worse than the other one.", 2),
        ("The first image is better.", 1),
        ("the second one is preferred", 2),
        ("I prefer Image 2.", 2),
        ("Final answer: Image 1", 1),
        ("Lots of analysis.\nVerdict: Image 2 is better", 2),
        ("\\boxed{1}", 1),
        ("<think>very long reasoning that was cut off because of max_tokens", None),
        ("", None),
        (None, None),
        ("asdf qwer zxcv", None),
    ],
)
def test_parse_preference(text, want):
    assert parse_preference(text) == want


# ------------------------------------------------------------------ win-rate math


def test_win_rates_wins_ties_failures():
    # 0 beats 1, 1 vs 2 tie, 2 beats 0 (2 is "first" there), 0 vs 1 again unparseable
    r = win_rates(3, [(0, 1, 1), (1, 2, 0), (2, 0, 1), (0, 1, None)], decimals=None)
    assert r.tolist() == pytest.approx([1.5 / 3, 1.0 / 3, 1.5 / 2])
    full = win_rates(4, [(a, b, 1) for a, b in pair_plan(4, "index")])
    assert full.tolist() == pytest.approx([1.0, 0.667, 0.333, 0.0])  # rounded to 3 decimals
    assert win_rates(4, [(a, b, None) for a, b in pair_plan(4, "index")]).tolist() == [0.5] * 4
    assert win_rates(1, []).tolist() == [0.5]
    rng = np.random.default_rng(0)
    outs = [(a, b, int(rng.integers(0, 3))) for a, b in pair_plan(8, "index")]
    assert win_rates(8, outs, decimals=None).mean().item() == pytest.approx(0.5)


def test_pair_plan_orders():
    import random

    idx = pair_plan(8, "index")
    assert idx == [(i, j) for i in range(8) for j in range(i + 1, 8)] and len(idx) == 28
    a = pair_plan(8, "random", random.Random(3))
    assert a == pair_plan(8, "random", random.Random(3))
    assert a != pair_plan(8, "random", random.Random(4))
    assert sorted(tuple(sorted(p)) for p in a) == idx  # every unordered pair exactly once
    assert any(x > y for x, y in a) and any(x < y for x, y in a)
    both = pair_plan(3, "both")
    assert sorted(both) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    with pytest.raises(ValueError):
        pair_plan(3, "sorted")


def test_groups_and_callable_judge():
    def brighter(text, a, b):  # a stand-in judge: prefers the brighter image
        return "<answer>Image 1 is better</answer>" if np.mean(a) > np.mean(b) else "<answer>Image 2 is better</answer>"

    imgs = [gray(v) for v in (10, 200, 100, 50, 250, 150)]
    r = PreferenceReward(brighter, seed=1)
    s = r(imgs, ["p"] * 6, group_ids=[0, 0, 0, 1, 1, 1])
    assert s.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0, 1.0, 0.5])
    assert len(r.last_comparisons) == 6
    # without group ids, images with the same prompt form a group
    s2 = r(imgs, ["a", "a", "a", "b", "b", "b"])
    assert torch.equal(s, s2)
    # a judge that raises counts as ties
    assert PreferenceReward(lambda *a: 1 / 0)(imgs[:3], "p").tolist() == [0.5] * 3


# ------------------------------------------------------------------ OpenAI-compatible endpoint


def _brightness(data_url):
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/jpeg;base64"
    return float(np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L")).mean())


class _Judge(BaseHTTPRequestHandler):
    mode = "ok"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, body))
        if srv.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        content = body["messages"][-1]["content"]
        b1, b2 = (_brightness(c["image_url"]["url"]) for c in content if c["type"] == "image_url")
        with srv.lock:
            srv.seen.append((round(b1), round(b2)))
        if srv.mode == "garbage":
            answer = "I am not sure what to say."
        else:
            answer = f"<think>comparing brightness {b1:.0f} vs {b2:.0f}</think><answer>Image {1 if b1 > b2 else 2} is better</answer>"
        out = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            }
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out.encode())


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    srv.lock, srv.requests, srv.seen, srv.mode = threading.Lock(), [], [], "ok"
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_endpoint_url_forms():
    assert EndpointJudge("localhost:18087").endpoint == "http://localhost:18087/v1/chat/completions"
    assert EndpointJudge("http://h:1/v1/").endpoint == "http://h:1/v1/chat/completions"
    assert EndpointJudge("https://h/x/v1/chat/completions").endpoint == "https://h/x/v1/chat/completions"


def test_endpoint_judge_win_rates_and_payload(server):
    imgs = [gray(v) for v in (240, 10, 160, 80)]
    r = PreferenceReward(url=_url(server), seed=0, max_workers=4, timeout=10)
    s = r(imgs, "a bright square")
    assert s.tolist() == pytest.approx([1.0, 0.0, 0.667, 0.333])
    assert len(server.requests) == 6
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "UnifiedReward" and body["temperature"] == 0 and body["max_tokens"] == 4096
    content = body["messages"][-1]["content"]
    assert [c["type"] for c in content] == ["image_url", "image_url", "text"]
    assert content[-1]["text"] == PROMPT_TEMPLATE.format(prompt="a bright square")
    assert (
        content[-1]["text"] == "Compare these two images based on the prompt: a bright square. Which image is better?"
    )


def test_endpoint_pair_order_is_seeded(server):
    imgs = [gray(v) for v in (20, 50, 80, 110, 140, 170, 200, 230)]

    def run(seed):
        server.seen.clear()
        PreferenceReward(url=_url(server), seed=seed, max_workers=4)(imgs, "p")
        return sorted(server.seen)

    a, b, c = run(7), run(7), run(8)
    assert a == b and a != c
    assert len(a) == 28 and any(x > y for x, y in a) and any(x < y for x, y in a)
    server.seen.clear()
    PreferenceReward(url=_url(server), pair_order="index")(imgs, "p")
    assert all(x < y for x, y in server.seen)  # official order: lower index shown first


def test_endpoint_http_500_and_garbage_count_as_ties(server):
    imgs = [gray(v) for v in (30, 130, 230)]
    server.mode = "500"
    s = PreferenceReward(url=_url(server), max_retries=2, backoff=0, timeout=5)(imgs, "p")
    assert s.tolist() == [0.5, 0.5, 0.5]
    assert len(server.requests) == 6  # 3 pairs x 2 tries
    server.mode = "garbage"
    r = PreferenceReward(url=_url(server), max_retries=1)
    assert r(imgs, "p").tolist() == [0.5, 0.5, 0.5]
    assert all(c["verdict"] is None and c["answer"] for c in r.last_comparisons)


def test_endpoint_unreachable_counts_as_ties():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there any more
    s = PreferenceReward(url=f"http://127.0.0.1:{port}", max_retries=1, timeout=2)([gray(0), gray(255)], "p")
    assert s.tolist() == [0.5, 0.5]


# ------------------------------------------------------------------ tiny local Qwen2.5-VL judge


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    assert (QWEN_TINY / "config.json").is_file(), "the tiny Qwen2.5-VL fixture ships in tests/fixtures"
    try:
        from transformers import Qwen2VLImageProcessorPil as ImageProc  # transformers 5 without torchvision
    except ImportError:  # pragma: no cover - transformers 4
        from transformers import Qwen2VLImageProcessor as ImageProc
    d = tmp_path_factory.mktemp("qwen") / "judge"
    d.mkdir()
    for f in QWEN_TINY.iterdir():  # link, never modify, the shared fixture
        try:
            (d / f.name).symlink_to(f.resolve())
        except OSError:  # pragma: no cover - no symlinks on this filesystem
            shutil.copy2(f, d / f.name)
    ImageProc(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(d)
    return d


def test_tiny_qwen_judge_end_to_end(qwen_dir):
    judge = QwenVLJudge(qwen_dir, device="cpu", max_new_tokens=6, max_pixels=64 * 64)
    r = PreferenceReward(judge, seed=0)
    imgs = [gray(v, 64) for v in (0, 120, 250)]
    s = r(imgs, "a gray square")
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
    assert s.mean().item() == pytest.approx(0.5, abs=1e-3)
    # random weights produce garbage text: every comparison is a failure worth 0.5
    assert len(r.last_comparisons) == 3
    assert all(isinstance(c["answer"], str) and c["verdict"] is None for c in r.last_comparisons)
    assert s.tolist() == [0.5, 0.5, 0.5]
    assert judge.load()[0] is QwenVLJudge(qwen_dir, device="cpu").load()[0]  # cached


def test_qwen_judge_missing_folder(tmp_path):
    r = PreferenceReward(model_path=tmp_path / "no-judge", device="cpu")
    with pytest.raises(RewardModelNotFound, match="UnifiedReward-Think"):
        r([gray(0), gray(1)], "p")
