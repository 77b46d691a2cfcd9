"""Running the shipped example workflows on tiny models: a models folder laid out as the examples expect, and the
overrides that point them at it (small sizes, few steps)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "example_workflows"
EXAMPLES = sorted(p.stem for p in EXAMPLES_DIR.glob("*.json"))

TINY_MODEL_FOR = {  # what each real model name in the examples becomes
    "instruct-pix2pix-00-22000.safetensors": "[diffusers] tiny-sd",
    "[diffusers] sdxl-instructpix2pix-768": "[diffusers] tiny-sdxl",
    "cosxl_edit.safetensors": "[diffusers] tiny-cosxl",
}
FAST = {"steps": 2, "size": 64}  # widget values that keep every example fast on tiny models


def build_models_dir(root: Path, tiny_sd, tiny_sdxl, tiny_cosxl) -> Path:
    """models/{diffusers,loras,embeddings}/ with the tiny models and the LoRA/embedding the examples name."""
    from adapter_files import random_lora, random_vectors, to_kohya, write, write_embedding

    from ipx2p_core import load_model

    models = root / "models"
    for name, fx in (("tiny-sd", tiny_sd), ("tiny-sdxl", tiny_sdxl), ("tiny-cosxl", tiny_cosxl)):
        target = models / "diffusers" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(fx["folder"], target)
    sd = load_model(tiny_sd["folder"], cache=None)
    write(to_kohya(random_lora(sd, seed=3), sdxl=False), models / "loras" / "style_lora.safetensors")
    write_embedding(models / "embeddings" / "style.safetensors", "a1111_safetensors",
                    vectors=random_vectors(32, 2, seed=5))
    return models


def copy_inputs(input_dir: Path) -> Path:
    input_dir.mkdir(parents=True, exist_ok=True)
    for f in (EXAMPLES_DIR / "input").iterdir():
        shutil.copy(f, input_dir / f.name)
    return input_dir


def load_example(name: str) -> dict:
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text())


def tiny_overrides(workflow: dict) -> dict[str, object]:
    """``{"node_id.input": value}`` pointing an example at the tiny models with few steps and small sizes."""
    from ipx2p_standalone.execution_graph import ExecutionGraph

    out: dict[str, object] = {}
    for nid, dto in ExecutionGraph(workflow).nodes.items():  # nodes inside subgraphs too, as "outer:inner"
        node, kind = dto.node, dto.node["type"]
        if kind == "IPX2PLoadModel":
            out[f"{nid}.model_name"] = TINY_MODEL_FOR[node["widgets_values"][0]]
            out[f"{nid}.device"] = "cpu"
        if kind in ("IPX2PSampler", "IPX2PEditImage", "IPX2PGuidanceSweep", "IPX2PInstructionChain"):
            out[f"{nid}.steps"] = FAST["steps"]
        if kind in ("IPX2PEncodeImage", "IPX2PEditImage", "IPX2PGuidanceSweep", "IPX2PInstructionChain"):
            out[f"{nid}.resize"] = "fit"  # the tiny VAE halves (not eighths) the size: keep the work small
            out[f"{nid}.size"] = FAST["size"]
    return out
