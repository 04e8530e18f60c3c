"""Tests of nodes/comfy_services' progress, interrupt and preview services: standalone fallbacks, and the
ComfyUI path against the test doubles of tests/comfy_doubles.py (fixture ``fake_comfy``).
"""

from __future__ import annotations

import sys
import threading

import pytest

from nodes import comfy_services as cs

pytestmark = pytest.mark.usefixtures("clean_comfy_services")


def test_not_in_comfyui_by_default():
    assert cs.in_comfyui() is False


def test_progress_counts_and_clamps():
    with cs.Progress(10) as p:
        p.update()
        p.update(3)
        assert (p.current, p.total) == (4, 10)
        p.update_absolute(25)
        assert p.current == 10  # clamped like ComfyUI's ProgressBar
        p.update_absolute(5, total=20, preview=("JPEG", object(), 512))  # preview ignored outside
        assert (p.current, p.total) == (5, 20)


def test_progress_tqdm_bar_follows(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # tqdm is a dependency: the bar must be there
    p = cs.Progress(8, desc="test")
    try:
        assert p._tqdm is not None and not p._tqdm.disable
        p.update(2)
        p.update_absolute(6)
        assert p._tqdm.n == 6 and p._tqdm.total == 8
    finally:
        p.close()


def test_progress_callback_zero_based_and_comfy_signature():
    p = cs.Progress(4)
    cb = p.callback()
    cb(0)
    assert p.current == 1
    cb(2, "x0", "x", 6)  # ComfyUI's callback(step, x0, x, total_steps)
    assert (p.current, p.total) == (3, 6)
    cb(4, total_steps=10)
    assert (p.current, p.total) == (5, 10)
    seen = []
    cb = p.callback(preview_fn=lambda step, *a, **k: seen.append(step), zero_based=False)
    cb(7)
    assert p.current == 7 and seen == [7]


def test_interrupt_flag_raises_inside_loop_and_resets():
    done = []
    with pytest.raises(cs.DeepGenInterrupted):
        for step in range(10):
            cs.check_interrupt()
            done.append(step)
            if step == 3:
                cs.request_interrupt()
    assert done == [0, 1, 2, 3]
    assert cs.interrupted() is False  # raising consumed the request, like ComfyUI
    cs.check_interrupt()  # next run starts clean


def test_interrupt_from_another_thread_and_clear():
    t = threading.Thread(target=cs.request_interrupt)
    t.start()
    t.join()
    assert cs.interrupted() is True
    cs.clear_interrupt()
    cs.check_interrupt()
    cs.request_interrupt()
    p = cs.Progress(3)
    with pytest.raises(cs.DeepGenInterrupted):
        p.callback()(0)
    assert cs.interrupt_exception_types() == (cs.DeepGenInterrupted,)
    assert not issubclass(cs.DeepGenInterrupted, OSError)


def test_in_comfyui_with_doubles(fake_comfy):
    assert cs.in_comfyui() is True


def test_progress_wraps_comfy_progressbar(fake_comfy):
    p = cs.Progress(5, node_id="12")
    p.update()
    p.update(2)
    preview = ("JPEG", object(), 512)
    p.update_absolute(4, total=8, preview=preview)
    p.update_absolute(99)
    assert p._tqdm is None
    assert fake_comfy.calls == [
        ("ProgressBar", 5, "12"),
        ("update_absolute", 1, None, None),
        ("update_absolute", 3, None, None),
        ("update_absolute", 4, 8, preview),
        ("update_absolute", 8, None, None),
    ]
    assert p.current == 8


def test_progress_old_core_without_node_id(fake_comfy):
    class OldBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            fake_comfy.calls.append(("old", value))

    fake_comfy.modules["comfy.utils"].ProgressBar = OldBar
    cs.Progress(3, node_id="1").update()
    assert fake_comfy.calls == [("old", 1)]


def test_check_interrupt_raises_native_exception(fake_comfy):
    native = fake_comfy.mm.InterruptProcessingException
    cs.check_interrupt()
    assert fake_comfy.calls == [("throw_if_interrupted",)]
    cs.request_interrupt()
    assert fake_comfy.interrupt is True and cs.interrupted() is True
    assert cs._interrupt_flag.is_set() is False  # ComfyUI's flag, not ours
    with pytest.raises(native):
        cs.check_interrupt()
    cs.request_interrupt()
    cs.clear_interrupt()
    assert fake_comfy.interrupt is False
    assert cs.interrupt_exception_types() == (cs.DeepGenInterrupted, native)
    cs.request_interrupt()
    with pytest.raises(cs.interrupt_exception_types()):
        cs.Progress(2).callback()(0)


def test_previews_follow_comfyui_preview_method(fake_comfy, monkeypatch):
    import enum
    import types

    class LatentPreviewMethod(enum.Enum):
        NoPreviews = "none"
        Auto = "auto"

    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    assert not cs.previews_enabled()  # the server default: no previews, so none are sent
    cli_args.args.preview_method = LatentPreviewMethod.Auto
    assert cs.previews_enabled()


def test_no_previews_outside_comfyui():
    assert not cs.previews_enabled()
