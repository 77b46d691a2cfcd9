"""Standalone LoadImage, SaveImage and PreviewImage with ComfyUI's names, inputs, outputs and file behaviour.

Written for this project from ComfyUI's documented behaviour (so graphs move between ComfyUI and the runner):

* LoadImage(image) → IMAGE ``[B,H,W,3]`` float32 0..1 and MASK ``[B,H,W]`` = 1 − alpha (a 64×64 zero mask when the
  image has no alpha). EXIF orientation is applied; every frame of a multi-frame file of the first frame's size
  becomes one batch entry (MPO files give their first frame). 32-bit integer ("I") images are scaled by 1/255.
  Names may carry ComfyUI's ``" [input]"`` / ``" [output]"`` / ``" [temp]"`` suffixes and subfolders; nothing outside
  those folders can be read.
* SaveImage(images, filename_prefix) writes ``<prefix>_00001_.png`` (the counter continues after the highest one in
  the folder), with ``%width%``, ``%height%``, ``%year%`` … and ``%batch_num%`` substituted, a subfolder allowed in
  the prefix, and PNG text chunks ``prompt`` (the API prompt) and one per ``extra_pnginfo`` key (``workflow``), each
  ``json.dumps`` of the value — exactly what ComfyUI writes, so ComfyUI restores the graph from the file. Each
  file goes to a temp file and is renamed into place; a name (or subfolder) that is a symlink leading out of the
  output folder is refused.
* PreviewImage(images) does the same into the temp folder with a random ``_temp_xxxxx`` prefix and fast compression.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from ipx2p_core.atomic_files import save_image_atomic
from ipx2p_core.image import check_image_pixels
from ipx2p_core.paths import contained_path

ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


@dataclass
class Folders:
    input: Path
    output: Path
    temp: Path
    png_metadata: bool = True

    def base(self, kind: str) -> Path:
        return {"input": self.input, "output": self.output, "temp": self.temp}[kind]


def is_image_name(name: str) -> bool:
    mime, _ = mimetypes.guess_type(name, strict=False)
    return bool(mime) and mime.split("/")[0] == "image"


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's ``"name.png [output]"`` → (``"name.png"``, ``"output"``); (name, None) without an annotation."""
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def resolve_annotated(folders: Folders, name: str) -> Path | None:
    """ComfyUI's annotated file name → a path inside the named folder (input by default), or None if it escapes
    (symlinks resolved: a link inside the folder may not lead out of it)."""
    name, kind = split_annotation(name)
    return contained_path(folders.base(kind or "input"), name)


def _image_problem(path: Path | None, name: str) -> str | None:
    if path is None:
        return f"Invalid image file: {name} (outside the input, output and temp folders)"
    if not path.is_file():
        return f"Invalid image file: {name} does not exist (looked for {path})"
    try:
        with Image.open(path) as img:
            check_image_pixels(img, name=name)  # every frame, before anything is decoded
            img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for broken files
        return f"Invalid image file: {name} is not a readable image ({type(exc).__name__}: {exc})"
    return None


class LoadImageBase:
    folders: Folders  # set on the per-runner subclass

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        folder = cls.folders.input
        files = []
        if folder.is_dir():
            files = sorted(f.name for f in folder.iterdir() if f.is_file() and is_image_name(f.name))
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        path = resolve_annotated(self.folders, image)
        if path is None:
            raise ValueError(f"Invalid image file: {image}")
        img = Image.open(path)
        check_image_pixels(img, name=image)  # every frame counts: a small first page may hide huge ones
        frames, masks = [], []
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            elif rgb.size != size:
                continue
            frames.append(torch.from_numpy(np.asarray(rgb).astype(np.float32) / 255.0)[None])
            if "A" in frame.getbands():
                alpha = np.asarray(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.asarray(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask[None])
        if len(frames) > 1 and img.format != "MPO":
            return torch.cat(frames, dim=0), torch.cat(masks, dim=0)
        return frames[0], masks[0]

    @classmethod
    def IS_CHANGED(cls, image):
        path = resolve_annotated(cls.folders, image)
        if path is None or not path.is_file():
            return f"missing:{image}"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        problem = _image_problem(resolve_annotated(cls.folders, image), image)
        return problem or True


def substitute_prefix(prefix: str, width: int, height: int) -> str:
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    for key, value in (("%width%", width), ("%height%", height), ("%year%", now.tm_year),
                       ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                       ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                       ("%second%", f"{now.tm_sec:02d}")):
        prefix = prefix.replace(key, str(value))
    return prefix


def save_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, file stem, next counter, subfolder) for ``prefix`` under ``output_dir``, as ComfyUI numbers files."""
    prefix = substitute_prefix(prefix, width, height)
    norm = os.path.normpath(prefix)
    subfolder, stem = os.path.dirname(norm), os.path.basename(norm)
    base = Path(os.path.abspath(output_dir))
    folder = Path(os.path.abspath(base / subfolder))
    if os.path.isabs(subfolder) or os.path.commonpath((str(base), str(folder))) != str(base) or \
            contained_path(base, subfolder, allow_root=True) is None:  # also a symlinked subfolder leading out
        raise ValueError(f"Saving image outside the output folder is not allowed (prefix {prefix!r}, "
                         f"output folder {base}).")
    counter = 1
    if folder.is_dir():
        key = os.path.normcase(stem)
        for name in os.listdir(folder):
            head, digits = name[: len(stem) + 1], name[len(stem) + 1:].split("_")[0]
            if os.path.normcase(head[:-1]) == key and head[-1:] == "_" and digits.isdigit():
                counter = max(counter, int(digits) + 1)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder, stem, counter, subfolder


class SaveImageBase:
    folders: Folders
    kind = "output"
    prefix_append = ""
    compress_level = 4

    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": (
                    "The prefix for the file to save. This may include formatting information such as "
                    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.")}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        out_dir = self.folders.base(self.kind)
        folder, stem, counter, subfolder = save_path(filename_prefix, out_dir, images[0].shape[1],
                                                     images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            pixels = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            info = None
            if self.folders.png_metadata:
                info = PngInfo()
                if prompt is not None:
                    info.add_text("prompt", json.dumps(prompt))
                if extra_pnginfo is not None:
                    for key in extra_pnginfo:
                        info.add_text(key, json.dumps(extra_pnginfo[key]))
            name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            if contained_path(out_dir, subfolder, name) is None:  # a symlink of that name leading out
                raise ValueError(f"Saving image outside the output folder is not allowed: {folder / name} is a "
                                 f"link that leads outside the output folder {out_dir}.")
            # temp file + rename: a killed run never leaves half a PNG under a real name
            save_image_atomic(img, folder / name, format="PNG", pnginfo=info, compress_level=self.compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": self.kind})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImageBase(SaveImageBase):
    kind = "temp"
    compress_level = 1
    DESCRIPTION = "Saves the input images to the temp directory and shows them."

    def __init__(self):
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


BUILTIN_DISPLAY_NAMES = {"LoadImage": "Load Image", "SaveImage": "Save Image", "PreviewImage": "Preview Image"}


def make_builtin_nodes(folders: Folders) -> dict[str, type]:
    """Classes bound to one runner's folders (each runner gets its own, so two runners never share folders)."""
    attrs = {"folders": folders, "__module__": __name__}
    return {
        "LoadImage": type("LoadImage", (LoadImageBase,), dict(attrs)),
        "SaveImage": type("SaveImage", (SaveImageBase,), dict(attrs)),
        "PreviewImage": type("PreviewImage", (PreviewImageBase,), dict(attrs)),
    }
