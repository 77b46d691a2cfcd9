"""Small V1 node classes for runner tests: numbers flowing through a graph, an image maker, output nodes, list
semantics, IS_CHANGED / VALIDATE_INPUTS / hidden inputs, a failing node and a slow node with progress."""

from __future__ import annotations

import torch

from ipx2p_nodes.host import get_host

CALLS: list[tuple[str, str]] = []  # (class, unique id or "") per call, in order


class Number:
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0})}}

    def make(self, value):
        CALLS.append(("Number", str(value)))
        return (value,)


class Add:
    RETURN_TYPES = ("NUMBER",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "add"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("NUMBER",), "b": ("NUMBER",)}}

    def add(self, a, b):
        CALLS.append(("Add", ""))
        return (a + b,)


class Scale:
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "scale"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("NUMBER",), "factor": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0})},
                "optional": {"offset": ("INT", {"default": 0, "min": -5, "max": 5})}}

    def scale(self, x, factor, offset=0):
        CALLS.append(("Scale", ""))
        return (x * factor + offset,)


class Show:
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("NUMBER",), "label": ("STRING", {"default": "v"})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def show(self, value, label, unique_id=None, prompt=None, extra_pnginfo=None):
        CALLS.append(("Show", unique_id))
        Show.last_hidden = (unique_id, prompt, extra_pnginfo)
        return {"ui": {"text": [f"{label}={value}"]}}


class MakeImage:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "default": "hello", "dynamicPrompts": True}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "width": ("INT", {"default": 8, "min": 1, "max": 64}),
            "color": (["red", "green", "blue"], {"default": "red"}),
        }}

    def make(self, text, seed, width, color):
        CALLS.append(("MakeImage", color))
        img = torch.zeros(1, 6, width, 3)
        img[..., ["red", "green", "blue"].index(color)] = (seed % 255) / 255.0
        return (img,)


class Invert:
    """IMAGE → IMAGE with an optional MASK input: used to test bypass (first input of the matching type)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}, "optional": {"mask": ("MASK",)}}

    def invert(self, image, mask=None):
        CALLS.append(("Invert", ""))
        return (1.0 - image,)


class Volatile:
    """IS_CHANGED returns NaN: always runs again."""

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 1.0})}}

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def make(self, value):
        CALLS.append(("Volatile", ""))
        return (value,)


class Stamped:
    """IS_CHANGED returns whatever `Stamped.stamp` holds (a file's hash in real nodes)."""

    stamp = "a"
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 1.0})}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return cls.stamp

    def make(self, value):
        CALLS.append(("Stamped", ""))
        return (value,)


class Checked:
    """VALIDATE_INPUTS rejects names starting with 'bad'; it judges `name`, so no combo check applies to it."""

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": (["good.bin"],)}}

    @classmethod
    def VALIDATE_INPUTS(cls, name):
        if name.startswith("bad"):
            return f"Model {name!r} not found"
        return True

    def make(self, name):
        CALLS.append(("Checked", name))
        return (1.0,)


class Counter:
    """Keeps state on its instance: ComfyUI keeps one object per node id across runs."""

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "tick"
    CATEGORY = "test"
    NOT_IDEMPOTENT = True

    def __init__(self):
        self.count = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 0.0})}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def tick(self, value):
        self.count += 1
        CALLS.append(("Counter", str(self.count)))
        return (float(self.count),)


class Fail:
    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "fail"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("NUMBER",)}}

    def fail(self, x):
        CALLS.append(("Fail", ""))
        raise ValueError(f"cannot handle {x}")


class Slow:
    """Reports progress through the host every step and stops when the host is interrupted (as our sampler does)."""

    RETURN_TYPES = ("NUMBER",)
    FUNCTION = "run"
    CATEGORY = "test"
    on_step = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("NUMBER",), "steps": ("INT", {"default": 4, "min": 1, "max": 100})}}

    def run(self, x, steps):
        CALLS.append(("Slow", ""))
        host = get_host()
        for i in range(steps):
            if host.cancelled():
                from ipx2p_core.errors import Cancelled

                raise Cancelled("stopped")
            host.progress(i + 1, steps, None)
            if Slow.on_step is not None:
                Slow.on_step(i + 1)
        return (x,)


class Spread:
    """OUTPUT_IS_LIST: one call makes a list; downstream nodes run once per item."""

    RETURN_TYPES = ("NUMBER",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "spread"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 10})}}

    def spread(self, count):
        CALLS.append(("Spread", ""))
        return ([float(i) for i in range(count)],)


class Total:
    """INPUT_IS_LIST: gets the whole list in one call."""

    RETURN_TYPES = ("NUMBER",)
    INPUT_IS_LIST = True
    FUNCTION = "total"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("NUMBER",)}}

    def total(self, values):
        CALLS.append(("Total", ""))
        return (sum(values),)


NODES = {cls.__name__: cls for cls in (Number, Add, Scale, Show, MakeImage, Invert, Volatile, Stamped, Checked,
                                        Counter, Fail, Slow, Spread, Total)}
