"""Build example_workflows/*.json (ComfyUI UI format 0.4) and their .jpg thumbnails from short descriptions.

    python tools/build_example_workflows.py

Widget values are laid out from the nodes' own INPUT_TYPES (positional, with the extra control value after a seed),
so the files stay valid when a node gains an input: rebuild and commit.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "example_workflows"
EXAMPLE_IMAGE = "ipx2p_example.png"
MASKED_IMAGE = "ipx2p_example_sky_mask.png"  # the same picture; its transparent sky is the region to edit
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# ComfyUI's own nodes used by the examples (their schemas, as ComfyUI defines them).
BUILTIN = {
    "LoadImage": {"inputs": [("image", "COMBO", None)], "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
                  "extra_widgets": {"image": "image"}},
    "SaveImage": {"inputs": [("images", "IMAGE", None), ("filename_prefix", "STRING", None)], "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE", None)], "outputs": []},
    "Note": {"inputs": [("text", "STRING", None)], "outputs": []},
}


def node_schema(class_type: str):
    """[(input name, type, options)] in widget order and [(output name, type)]."""
    if class_type in BUILTIN:
        spec = BUILTIN[class_type]
        return spec["inputs"], spec["outputs"]
    import ipx2p_nodes

    cls = ipx2p_nodes.NODE_CLASS_MAPPINGS[class_type]
    types = cls.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, (kind, *opts) in types.get(section, {}).items():
            t = "COMBO" if isinstance(kind, list) else kind
            inputs.append((name, t, opts[0] if opts else {}))
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    return inputs, list(zip(names, cls.RETURN_TYPES))


@dataclass
class Node:
    id: int
    type: str
    pos: tuple
    widgets: dict
    size: tuple = (320, 200)
    title: str | None = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


class Workflow:
    def __init__(self):
        self.nodes: list[Node] = []
        self.links: list[list] = []

    def add(self, class_type, pos, box=(320, 200), title=None, **widgets) -> Node:
        n = Node(len(self.nodes) + 1, class_type, pos, widgets, box, title)
        self.nodes.append(n)
        return n

    def link(self, src: Node, out_slot: int, dst: Node, input_name: str):
        _, outputs = node_schema(src.type)
        link_id = len(self.links) + 1
        self.links.append([link_id, src.id, out_slot, dst.id, input_name, outputs[out_slot][1]])

    def to_json(self) -> dict:
        nodes = []
        for order, n in enumerate(self.nodes):
            inputs, outputs = node_schema(n.type)
            linked = {l[4]: l for l in self.links if l[3] == n.id}
            ui_inputs, values = [], []
            for name, kind, opts in inputs:
                if name in linked:
                    ui_inputs.append({"name": name, "type": kind, "link": linked[name][0]})
                    continue
                if kind not in WIDGET_TYPES:
                    continue
                value = n.widgets.get(name, (opts or {}).get("default"))
                if value is None and kind == "COMBO":
                    raise ValueError(f"{n.type}.{name} needs a value")
                values.append(value)
                if (opts or {}).get("control_after_generate"):
                    values.append(n.widgets.get(f"{name}_control", "fixed"))
                if n.type in BUILTIN and name in BUILTIN[n.type].get("extra_widgets", {}):
                    values.append(BUILTIN[n.type]["extra_widgets"][name])
            unknown = set(n.widgets) - {i[0] for i in inputs} - {f"{i[0]}_control" for i in inputs}
            if unknown:
                raise ValueError(f"{n.type} has no inputs {sorted(unknown)}")
            ui_outputs = []
            for slot, (name, kind) in enumerate(outputs):
                links = [l[0] for l in self.links if l[1] == n.id and l[2] == slot]
                ui_outputs.append({"name": name, "type": kind, "links": links, "slot_index": slot})
            node = {
                "id": n.id, "type": n.type, "pos": list(n.pos), "size": list(n.size), "flags": {}, "order": order,
                "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs,
                "properties": {"Node name for S&R": n.type}, "widgets_values": values,
            }
            if n.title:
                node["title"] = n.title
            nodes.append(node)
        links = []
        for link_id, src, slot, dst, input_name, kind in self.links:
            inputs, _ = node_schema(next(n.type for n in self.nodes if n.id == dst))
            dst_node = next(x for x in nodes if x["id"] == dst)
            dst_slot = next(i for i, inp in enumerate(dst_node["inputs"]) if inp["name"] == input_name)
            links.append([link_id, src, slot, dst, dst_slot, kind])
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.9, "offset": [40, 40]}}, "version": 0.4,
        }


# ------------------------------------------------------------------------------------------------------ examples

SD15_FILE = "instruct-pix2pix-00-22000.safetensors"
SDXL_FOLDER = "[diffusers] sdxl-instructpix2pix-768"
COSXL_FILE = "cosxl_edit.safetensors"


INPUTS_NOTE = ("Image: example_workflows/input/ is copied into ComfyUI's input folder when the pack loads (a file "
               "of yours with the same name is never replaced).")


def _note(wf, text, pos=(40, 600), width=340):
    # below Load Image (which ends at y 540; a title bar is 30 px above pos), as wide as the left column
    wf.add("Note", pos, box=(width, 230), text=f"{text}\n\n{INPUTS_NOTE}")


def staged(model_name, note, instruction="make it winter", resize="keep", size=512, steps=20, text_guidance=7.5,
           image_guidance=1.5, prefix="ipx2p", lora=None, embedding=None):
    wf = Workflow()
    load = wf.add("IPX2PLoadModel", (40, 60), box=(340, 130), model_name=model_name)
    model_out = load
    x = 420
    if lora:
        lo = wf.add("IPX2PApplyLoRA", (x, 60), box=(320, 130), lora_name=lora, strength_model=0.8,
                    strength_text=0.8)
        wf.link(model_out, 0, lo, "model")
        model_out, x = lo, x + 360
    if embedding:
        em = wf.add("IPX2PApplyEmbedding", (x, 60), box=(320, 110), embedding_name=embedding)
        wf.link(model_out, 0, em, "model")
        model_out, x = em, x + 360
    image = wf.add("LoadImage", (40, 240), box=(340, 300), image=EXAMPLE_IMAGE)
    enc_text = wf.add("IPX2PEncodeInstruction", (420, 240), box=(340, 220), instruction=instruction)
    enc_img = wf.add("IPX2PEncodeImage", (420, 500), box=(340, 180), resize=resize, size=size)
    sampler = wf.add("IPX2PSampler", (800, 240), box=(340, 300), steps=steps, text_guidance=text_guidance,
                     image_guidance=image_guidance)
    decode = wf.add("IPX2PDecode", (1180, 240), box=(300, 110))
    save = wf.add("SaveImage", (1180, 400), box=(360, 380), filename_prefix=prefix)
    wf.link(model_out, 0, enc_text, "model")
    wf.link(model_out, 0, enc_img, "model")
    wf.link(image, 0, enc_img, "image")
    wf.link(model_out, 0, sampler, "model")
    wf.link(enc_text, 0, sampler, "conditioning")
    wf.link(enc_img, 0, sampler, "image_latents")
    wf.link(model_out, 0, decode, "model")
    wf.link(sampler, 0, decode, "latent")
    wf.link(decode, 0, save, "images")
    _note(wf, note)
    return wf


def one_node(model_name, note, instruction="make it winter", steps=20, prefix="ipx2p_edit"):
    wf = Workflow()
    load = wf.add("IPX2PLoadModel", (40, 60), box=(340, 130), model_name=model_name)
    image = wf.add("LoadImage", (40, 240), box=(340, 300), image=EXAMPLE_IMAGE)
    edit = wf.add("IPX2PEditImage", (420, 60), box=(360, 560), instruction=instruction, steps=steps)
    save = wf.add("SaveImage", (820, 60), box=(360, 380), filename_prefix=prefix)
    wf.link(load, 0, edit, "model")
    wf.link(image, 0, edit, "image")
    wf.link(edit, 0, save, "images")
    _note(wf, note, pos=(820, 480), width=420)
    return wf


def masked(model_name, note, instruction="make the sky a starry night", prefix="ipx2p_masked"):
    wf = Workflow()
    load = wf.add("IPX2PLoadModel", (40, 60), box=(340, 130), model_name=model_name)
    image = wf.add("LoadImage", (40, 240), box=(340, 300), image=MASKED_IMAGE)
    edit = wf.add("IPX2PEditImage", (420, 60), box=(360, 640), instruction=instruction, steps=20, mask_feather=8)
    save = wf.add("SaveImage", (820, 60), box=(360, 380), filename_prefix=prefix)
    wf.link(load, 0, edit, "model")
    wf.link(image, 0, edit, "image")
    wf.link(image, 1, edit, "mask")
    wf.link(edit, 0, save, "images")
    _note(wf, note, pos=(820, 480), width=420)
    return wf


def sweep(model_name, note, instruction="make it winter", prefix="ipx2p_sweep"):
    wf = Workflow()
    load = wf.add("IPX2PLoadModel", (40, 60), box=(340, 130), model_name=model_name)
    image = wf.add("LoadImage", (40, 240), box=(340, 300), image=EXAMPLE_IMAGE)
    grid = wf.add("IPX2PGuidanceSweep", (420, 60), box=(360, 560), instruction=instruction, steps=20,
                  text_guidances="5, 7.5, 10", image_guidances="1, 1.5, 2")
    save = wf.add("SaveImage", (820, 60), box=(420, 420), filename_prefix=prefix)
    preview = wf.add("PreviewImage", (820, 520), box=(420, 300))
    wf.link(load, 0, grid, "model")
    wf.link(image, 0, grid, "image")
    wf.link(grid, 1, save, "images")
    wf.link(grid, 0, preview, "images")
    _note(wf, note, pos=(40, 600))
    return wf


WHERE_SD15 = ("Model: this graph names instruct-pix2pix-00-22000.safetensors (from huggingface.co/"
              "timbrooks/instruct-pix2pix): put it in models/checkpoints. Have the diffusers folder instead? Put it "
              "in models/diffusers/instruct-pix2pix and pick '[diffusers] instruct-pix2pix' in Load Model. "
              "MagicBrush and HQ-Edit SD 1.5 models work the same way.")

EXAMPLES = {
    "ipx2p_sd15_staged": (
        lambda: staged(SD15_FILE, "InstructPix2Pix, stage by stage. Change only a guidance value and only the "
                       "sampler and decode run again.\n\n" + WHERE_SD15),
        "SD 1.5 · staged nodes", "make it winter",
        "Encode, sample and decode as separate nodes: change a guidance value and only the sampler re-runs."),
    "ipx2p_sd15_edit_image": (
        lambda: one_node(SD15_FILE, "The whole edit in one node: same pixels as the staged graph with the same "
                         "settings.\n\n" + WHERE_SD15),
        "SD 1.5 · one-node edit", "make it winter",
        "The whole InstructPix2Pix edit in one node, same pixels as the staged graph."),
    "ipx2p_sdxl_edit": (
        lambda: staged(SDXL_FOLDER, "SDXL InstructPix2Pix, trained at 768 px (resize fit 768).\n\nModel: the "
                       "diffusers folder diffusers/sdxl-instructpix2pix-768, placed in models/diffusers/"
                       "sdxl-instructpix2pix-768.", resize="fit", size=768, steps=30, prefix="ipx2p_sdxl"),
        "SDXL InstructPix2Pix", "make it winter",
        "SDXL InstructPix2Pix (diffusers folder) at 768 px."),
    "ipx2p_cosxl_edit": (
        lambda: staged(COSXL_FILE, "CosXL Edit: SDXL with EDM v-prediction (the scheduler 'auto' picks EDM "
                       "Euler). Works best around 1024 px, text guidance ~5.\n\nModel: cosxl_edit.safetensors in "
                       "models/checkpoints (from huggingface.co/stabilityai/cosxl; non-commercial licence).",
                       resize="fit", size=1024, steps=20, text_guidance=5.0, prefix="ipx2p_cosxl"),
        "CosXL Edit", "make it winter",
        "CosXL Edit: SDXL with EDM v-prediction at 1024 px, text guidance 5."),
    "ipx2p_lora_embedding": (
        lambda: staged(SD15_FILE, "A LoRA and a textual-inversion embedding on one branch. Apply nodes return new "
                       "models: other branches from the same Load Model are unaffected. Use the embedding in the "
                       "instruction as embedding:NAME.\n\n" + WHERE_SD15 + " LoRA: any SD 1.5 LoRA in "
                       "models/loras; embedding: any SD 1.5 embedding in models/embeddings.",
                       instruction="turn it into a watercolor painting, embedding:style", lora="style_lora.safetensors",
                       embedding="style.safetensors", prefix="ipx2p_lora"),
        "LoRA + embedding", "turn it into a watercolor painting",
        "A LoRA and a textual-inversion embedding on one branch; other branches stay unchanged."),
    "ipx2p_masked_edit": (
        lambda: masked(SD15_FILE, "Regional edit: only the masked area changes, everything else keeps the input's "
                       "pixels exactly. The mask is the image's transparency (paint it in ComfyUI's mask editor: "
                       "right-click Load Image > Open in MaskEditor).\n\n" + WHERE_SD15),
        "SD 1.5 · masked edit (sky only)", "make the sky a starry night",
        "Edit only the masked sky; every pixel outside the mask stays the input's."),
    "ipx2p_guidance_sweep": (
        lambda: sweep(SD15_FILE, "Guidance sweep: 3 text x 3 image guidance values, same seed, one batched UNet call "
                      "per step; the contact sheet labels each cell.\n\n" + WHERE_SD15),
        "SD 1.5 · 3x3 guidance sweep", "make it winter",
        "3 text x 3 image guidance values, same seed, on one labelled contact sheet."),
}


def example_photo(width=512, height=384) -> Image.Image:
    """A synthetic landscape (sky, sun, hills, a house), the input every example workflow edits."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([110 + 60 * y / height, 160 + 50 * y / height, 235 - 20 * y / height], -1)
    img = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((380, 40, 450, 110), fill=(255, 225, 120))
    pts = [(i, int(250 + 35 * math.sin(i / 60.0) + 15 * math.sin(i / 23.0))) for i in range(0, width + 8, 8)]
    d.polygon(pts + [(width, height), (0, height)], fill=(80, 150, 70))
    d.polygon([(-20, 300), (150, 230), (330, 320), (330, height), (-20, height)], fill=(60, 125, 55))
    d.rectangle((170, 250, 260, 320), fill=(200, 170, 130))
    d.polygon([(160, 252), (215, 205), (270, 252)], fill=(150, 60, 50))
    d.rectangle((205, 285, 228, 320), fill=(100, 70, 40))
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    noise = np.random.RandomState(0).normal(0, 4, (height, width, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))


def thumbnail(photo: Image.Image, title: str, instruction: str) -> Image.Image:
    """A card: the input picture, the instruction and the setup. It shows no model output (none is run here)."""
    card = Image.new("RGB", (512, 384), (32, 34, 40))
    card.paste(photo.resize((480, 270), Image.Resampling.LANCZOS), (16, 16))
    d = ImageDraw.Draw(card)
    try:
        font = ImageFont.load_default(size=22)
        small = ImageFont.load_default(size=17)
    except TypeError:
        font = small = ImageFont.load_default()
    d.text((16, 298), f"\u201c{instruction}\u201d", fill=(240, 240, 240), font=font)
    d.text((16, 338), title, fill=(150, 190, 255), font=small)
    return card


def main():
    OUT.mkdir(exist_ok=True)
    (OUT / "input").mkdir(exist_ok=True)
    photo = example_photo()
    photo.save(OUT / "input" / EXAMPLE_IMAGE)
    sky = photo.convert("RGBA")
    alpha = np.full((photo.height, photo.width), 255, np.uint8)
    alpha[:200] = 0  # transparent sky: LoadImage turns transparency into the MASK (1 = edit)
    sky.putalpha(Image.fromarray(alpha))
    sky.save(OUT / "input" / MASKED_IMAGE)
    for name, (build, title, instruction, description) in EXAMPLES.items():
        workflow = build().to_json()
        # the studio's template dialog shows these (ComfyUI's own dialog shows custom-node templates by file name)
        workflow["extra"]["ipx2p_template"] = {"title": title, "description": description}
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        thumbnail(photo, title, instruction).save(OUT / f"{name}.jpg", quality=88)
        print("wrote", OUT / f"{name}.json")


if __name__ == "__main__":
    main()
