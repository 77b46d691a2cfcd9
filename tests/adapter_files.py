"""Build LoRA and textual-inversion files in every common layout, from random weights, for tests and benchmarks.

A LoRA is first made in one neutral form, ``{component: {layer: (A, B, alpha)}}`` (``A`` = down [r, in],
``B`` = up [out, r], alpha ``None`` = rank), then written as:

* ``peft``      diffusers' current format: ``unet.<layer>.lora_A.weight`` (+ ``text_encoder[_2].text_model.*``)
* ``kohya``     kohya-ss / A1111: ``lora_unet_<layer_with_underscores>.lora_down.weight``, ``.lora_up.weight``,
                ``.alpha``; ``lora_te_`` (SD) or ``lora_te1_`` / ``lora_te2_`` (SDXL); SDXL UNet names in the
                original (SGM) layout, ``input_blocks_4_1_...``, as kohya writes them
* ``old``       diffusers' old attention-processor format: ``unet.<block>.processor.to_q_lora.down.weight``,
                ``text_encoder.text_model....to_q_lora.down.weight``
* ``ip2p``      diffusers' InstructPix2Pix LoRA training script: ``convert_state_dict_to_diffusers(
                get_peft_model_state_dict(unet))`` -> ``unet.<layer>.lora.down.weight`` (UNet only)
* ``peft_raw``  a bare ``get_peft_model_state_dict(unet)``, no component prefix (UNet only)
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TE_NAMES = ("text_encoder", "text_encoder_2")


def _linear_layers(module, targets):
    """(name, nn.Linear) of the target layers, looking through peft wrappers of already-injected adapters."""
    out = []
    for name, m in module.named_modules():
        if name.endswith(targets) and ".lora_" not in name:
            m = getattr(m, "base_layer", m)
            if isinstance(m, torch.nn.Linear):
                out.append((name, m))
    return out


def random_lora(model, rank: int = 4, seed: int = 0, scale: float = 0.3, alpha: float | None = None,
                text: bool = True, unet_targets=UNET_TARGETS, te_targets=TE_TARGETS, conv_in: int | None = None):
    """Neutral LoRA for an engine model (``IP2PModel``) or a diffusers pipeline's components.

    ``conv_in``: also a LoCon-style conv_in layer taking this many input channels (4 = trained on plain SD).
    """
    unet = model.unet
    encoders = model.text_encoders if hasattr(model, "text_encoders") else (model.text_encoder,)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict] = {"unet": {}}

    def pair(n_in, n_out):
        a = torch.randn(rank, n_in, generator=g) * scale
        b = torch.randn(n_out, rank, generator=g) * scale
        return a, b

    for name, m in _linear_layers(unet, unet_targets):
        a, b = pair(m.in_features, m.out_features)
        out["unet"][name] = (a, b, alpha)
    if conv_in is not None:
        conv = getattr(unet.conv_in, "base_layer", unet.conv_in)
        a = torch.randn(rank, conv_in, 3, 3, generator=g) * scale
        b = torch.randn(conv.out_channels, rank, 1, 1, generator=g) * scale
        out["unet"]["conv_in"] = (a, b, alpha)
    if text:
        for i, te in enumerate(encoders):
            comp = out.setdefault(TE_NAMES[i], {})
            for name, m in _linear_layers(te, te_targets):
                a, b = pair(m.in_features, m.out_features)
                comp[name.removeprefix("text_model.")] = (a, b, alpha)
    return out


def _sgm_names(unet) -> dict[str, str]:
    """diffusers UNet module name -> original (SGM/LDM) module name, e.g. down_blocks.1.attentions.0 -> input_blocks.4.1."""
    from ipx2p_core.ldm_layout import unet_to_ldm

    sd = {k: v for k, v in unet.state_dict().items() if ".lora_" not in k}
    sd = {k.replace(".base_layer.", "."): v for k, v in sd.items()}
    tags = {k: torch.tensor(i) for i, k in enumerate(sd)}
    keys = list(sd)
    ldm = unet_to_ldm(tags, None)
    out = {}
    for new, v in ldm.items():
        old = keys[int(v)]
        out[old.rsplit(".", 1)[0]] = new.removeprefix("model.diffusion_model.").rsplit(".", 1)[0]
    return out


def to_peft(lora) -> dict[str, torch.Tensor]:
    sd = {}
    for comp, layers in lora.items():
        for name, (a, b, _alpha) in layers.items():
            prefix = f"{comp}.text_model." if comp.startswith("text_encoder") else f"{comp}."
            sd[f"{prefix}{name}.lora_A.weight"] = a.clone()
            sd[f"{prefix}{name}.lora_B.weight"] = b.clone()
    return sd


def to_kohya(lora, sdxl: bool, unet=None) -> dict[str, torch.Tensor]:
    sgm = _sgm_names(unet) if sdxl else {}
    sd = {}
    for comp, layers in lora.items():
        for name, (a, b, alpha) in layers.items():
            if comp == "unet":
                key = "lora_unet_" + sgm.get(name, name).replace(".", "_")
            else:
                head = ("lora_te1_" if comp == "text_encoder" else "lora_te2_") if sdxl else "lora_te_"
                key = head + "text_model_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = a.clone()
            sd[f"{key}.lora_up.weight"] = b.clone()
            sd[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else a.shape[0]))
    return sd


_OLD_UNET = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
_OLD_TE = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}


def to_old(lora, unet_prefix: bool = True) -> dict[str, torch.Tensor]:
    sd = {}
    for comp, layers in lora.items():
        for name, (a, b, _alpha) in layers.items():
            parent, _, leaf = name.rpartition(".")
            if comp == "unet":
                if name.endswith("to_out.0"):
                    parent, leaf = name[: -len(".to_out.0")], "to_out.0"
                key = f"{parent}.processor.{_OLD_UNET[leaf]}"
                key = f"unet.{key}" if unet_prefix else key
            else:
                key = f"{comp}.text_model.{parent}.{_OLD_TE[leaf]}"
            sd[f"{key}.down.weight"] = a.clone()
            sd[f"{key}.up.weight"] = b.clone()
    return sd


def to_ip2p_script(lora) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers

    peft = {}
    for name, (a, b, _alpha) in lora["unet"].items():
        peft[f"{name}.lora_A.weight"] = a.clone()
        peft[f"{name}.lora_B.weight"] = b.clone()
    return {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(peft).items()}


def to_peft_raw(lora) -> dict[str, torch.Tensor]:
    sd = {}
    for name, (a, b, _alpha) in lora["unet"].items():
        sd[f"{name}.lora_A.weight"] = a.clone()
        sd[f"{name}.lora_B.weight"] = b.clone()
    return sd


def write(sd: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, str(path))
    return path


# -------------------------------------------------------------------------------------------- textual inversion


def random_vectors(width: int, n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * scale


def write_embedding(path: Path, layout: str, vectors=None, token: str = "<tok>", clip_l=None, clip_g=None) -> Path:
    """layout: a1111_pt | a1111_safetensors | diffusers_bin | diffusers_safetensors | raw_pt | sdxl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "a1111_pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.clone()}, "name": token,
                    "step": 1000, "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, str(path))
    elif layout == "a1111_safetensors":
        from safetensors.torch import save_file

        save_file({"emb_params": vectors.contiguous()}, str(path))
    elif layout == "diffusers_bin":
        torch.save({token: vectors[0].clone() if vectors.shape[0] == 1 else vectors.clone()}, str(path))
    elif layout == "diffusers_safetensors":
        from safetensors.torch import save_file

        save_file({token: vectors.contiguous()}, str(path))
    elif layout == "raw_pt":
        torch.save(vectors.clone(), str(path))
    elif layout == "sdxl":
        from safetensors.torch import save_file

        save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    else:
        raise ValueError(layout)
    return path
