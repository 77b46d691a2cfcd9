"""Model, LoRA and embedding names as a user types them (issue 15, point 1): NAME, NAME.ext, [diffusers] NAME,
KIND/NAME, a path under the models folder; a name that matches nothing lists close matches and where it looked."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from ipx2p_nodes.host import get_host, set_host
from ipx2p_nodes.loaders import IPX2PApplyEmbedding, IPX2PApplyLoRA, IPX2PLoadModel, resolve_model_choice
from ipx2p_nodes.model_names import resolve_model_name
from ipx2p_standalone.host import StandaloneHost

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fake_models(tmp_path):
    """A models folder with one of each kind (no weights: names only)."""
    models = tmp_path / "models"
    for rel in ("checkpoints/instruct-pix2pix-00-22000.safetensors", "checkpoints/sub/cosxl_edit.safetensors",
                "loras/style_lora.safetensors", "embeddings/frost.pt"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"x")
    (models / "diffusers" / "tiny-sd").mkdir(parents=True)
    (models / "diffusers" / "tiny-sd" / "model_index.json").write_text("{}")
    host = StandaloneHost(models_dir=models, device="cpu")
    previous = get_host()
    set_host(host)
    yield models
    set_host(previous)


@pytest.mark.parametrize("name,kind,rel", [
    ("tiny-sd", "diffusers", "diffusers/tiny-sd"),
    ("[diffusers] tiny-sd", "diffusers", "diffusers/tiny-sd"),
    ("[diffusers]tiny-sd", "diffusers", "diffusers/tiny-sd"),
    ("diffusers/tiny-sd", "diffusers", "diffusers/tiny-sd"),
    ("models/diffusers/tiny-sd", "diffusers", "diffusers/tiny-sd"),
    ("{models}/diffusers/tiny-sd", "diffusers", "diffusers/tiny-sd"),
    ("instruct-pix2pix-00-22000.safetensors", "checkpoints", "checkpoints/instruct-pix2pix-00-22000.safetensors"),
    ("instruct-pix2pix-00-22000", "checkpoints", "checkpoints/instruct-pix2pix-00-22000.safetensors"),
    ("checkpoints/instruct-pix2pix-00-22000", "checkpoints", "checkpoints/instruct-pix2pix-00-22000.safetensors"),
    ("sub/cosxl_edit", "checkpoints", "checkpoints/sub/cosxl_edit.safetensors"),
    ("sub\\cosxl_edit.safetensors", "checkpoints", "checkpoints/sub/cosxl_edit.safetensors"),
])
def test_model_name_forms(fake_models, monkeypatch, name, kind, rel):
    monkeypatch.chdir(fake_models.parent)
    got_kind, path = resolve_model_name(get_host(), name.replace("{models}", str(fake_models)),
                                        ("checkpoints", "diffusers"))
    assert (got_kind, path.relative_to(fake_models).as_posix()) == (kind, rel)
    assert IPX2PLoadModel.VALIDATE_INPUTS(model_name=name.replace("{models}", str(fake_models))) is True


@pytest.mark.parametrize("node,arg,names", [
    (IPX2PApplyLoRA, "lora_name", ["style_lora", "style_lora.safetensors", "loras/style_lora", "models/loras/style_lora"]),
    (IPX2PApplyEmbedding, "embedding_name", ["frost", "frost.pt", "embeddings/frost.pt"]),
])
def test_lora_and_embedding_name_forms(fake_models, monkeypatch, node, arg, names):
    monkeypatch.chdir(fake_models.parent)
    for name in names:
        assert node.VALIDATE_INPUTS(**{arg: name}) is True, name


def test_not_found_lists_close_matches_and_where_it_looked(fake_models):
    message = IPX2PLoadModel.VALIDATE_INPUTS(model_name="tiny_sd")
    assert message.startswith(f"Model 'tiny_sd' not found (looked in checkpoints: {fake_models / 'checkpoints'}; "
                              f"diffusers: {fake_models / 'diffusers'}). Close matches: '[diffusers] tiny-sd'.")
    assert "[diffusers] NAME, diffusers/NAME" in message
    lora = IPX2PApplyLoRA.VALIDATE_INPUTS(lora_name="style-lora")
    assert lora.startswith(f"LoRA 'style-lora' not found (looked in loras: {fake_models / 'loras'}). "
                           "Close matches: 'style_lora.safetensors'.")
    none_close = IPX2PApplyEmbedding.VALIDATE_INPUTS(embedding_name="zzz")
    assert "Available: 'frost.pt'." in none_close
    with pytest.raises(Exception, match="Model name is empty"):
        resolve_model_choice("  ")


def test_names_never_leave_the_models_folder(fake_models, tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    for name in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "checkpoints/../../outside"):
        assert "not found" in IPX2PLoadModel.VALIDATE_INPUTS(model_name=name)


def test_a_plain_folder_is_not_a_model(fake_models):
    """``sub`` is a folder of checkpoints, not a model; a diffusers name never means a file."""
    assert "not found" in IPX2PLoadModel.VALIDATE_INPUTS(model_name="sub")
    (fake_models / "diffusers" / "loose.safetensors").write_bytes(b"x")
    assert "not found" in IPX2PLoadModel.VALIDATE_INPUTS(model_name="[diffusers] loose.safetensors")


def _readme_run_example() -> list[str]:
    import re

    text = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"`(ipx2p run example_workflows/[^`]+)`", text)
    return shlex.split(command)


@pytest.mark.slow  # 30 steps, as the README says
def test_readme_run_example_works_as_written(tiny_sd, tmp_path, monkeypatch, capsys):
    """The README's `ipx2p run` command, verbatim, from a folder laid out as the README says (the example folder
    and ./models/checkpoints/<the name the workflow uses>). Tiny stand-ins under the same names: the model is a
    diffusers folder linked in under the checkpoint's name (a tiny single file would need --config, which the real
    file does not), and the input photo is 64 x 48 (at 512 x 384 the tiny model's attention runs for minutes)."""
    from PIL import Image

    from ipx2p_standalone.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "example_workflows" / "input").mkdir(parents=True)
    for f in (ROOT / "example_workflows").glob("*.json"):
        os.symlink(f, tmp_path / "example_workflows" / f.name)
    for f in (ROOT / "example_workflows" / "input").iterdir():
        Image.open(f).resize((64, 48)).save(tmp_path / "example_workflows" / "input" / f.name)
    workflow = json.loads((ROOT / "example_workflows" / "ipx2p_sd15_staged.json").read_text())
    (name,) = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "IPX2PLoadModel"]
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], tmp_path / "models" / "checkpoints" / name)
    monkeypatch.delenv("IPX2P_MODELS", raising=False)
    argv = _readme_run_example()
    assert argv[0] == "ipx2p"
    assert main(argv[1:] + ["-q"]) == 0, capsys.readouterr().err
    (written,) = capsys.readouterr().out.split()
    assert Path(written).parent == tmp_path / "output" and Path(written).stat().st_size > 0


def test_run_accepts_every_model_name_form(tiny_sd, tmp_path, monkeypatch, capsys):
    """`--set N.model_name=` with the plain name, diffusers/NAME and a path under the models folder."""
    from ipx2p_standalone.cli import main

    models = tmp_path / "models"
    (models / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], models / "diffusers" / "tiny-sd")
    argv = ["run", str(ROOT / "example_workflows" / "ipx2p_sd15_edit_image.json"), "--models", str(models),
            "--input-dir", str(ROOT / "example_workflows" / "input"), "--output-dir", str(tmp_path / "out"), "-q"]
    workflow = json.loads((ROOT / "example_workflows" / "ipx2p_sd15_edit_image.json").read_text())
    ids = {n["type"]: n["id"] for n in workflow["nodes"]}
    fast = ["--set", f"{ids['IPX2PEditImage']}.steps=1", "--set", f"{ids['IPX2PEditImage']}.resize=fit",
            "--set", f"{ids['IPX2PEditImage']}.size=64"]
    for name in ("tiny-sd", "diffusers/tiny-sd", str(models / "diffusers" / "tiny-sd")):
        assert main(argv + fast + ["--set", f"{ids['IPX2PLoadModel']}.model_name={name}"]) == 0, name
    capsys.readouterr()
    assert main(argv + ["--set", f"{ids['IPX2PLoadModel']}.model_name=tiny_sdd"]) == 2
    err = capsys.readouterr().err
    assert "Model 'tiny_sdd' not found (looked in checkpoints: " in err and "Close matches: '[diffusers] tiny-sd'" in err


def test_cli_model_lora_and_embedding_by_name(tiny_sd, photo, tmp_path, monkeypatch):
    """`ipx2p edit --model NAME --lora NAME --embedding NAME` find them in $IPX2P_MODELS."""
    from adapter_files import random_lora, random_vectors, to_kohya, write, write_embedding

    from ipx2p_core import load_model
    from ipx2p_standalone.cli import main

    models = tmp_path / "models"
    (models / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], models / "diffusers" / "tiny-sd")
    write(to_kohya(random_lora(load_model(tiny_sd["folder"], cache=None), seed=3), sdxl=False),
          models / "loras" / "style_lora.safetensors")
    write_embedding(models / "embeddings" / "style.safetensors", "a1111_safetensors",
                    vectors=random_vectors(32, 2, seed=5))
    monkeypatch.setenv("IPX2P_MODELS", str(models))
    photo.save(tmp_path / "in.png")
    out = tmp_path / "o.png"
    assert main(["edit", str(tmp_path / "in.png"), "x, embedding:style", "--model", "diffusers/tiny-sd", "--lora",
                 "style_lora:0.5", "--embedding", "style", "--steps", "1", "-o", str(out), "-q"]) == 0
    meta = json.loads(__import__("PIL.Image").Image.open(out).text["ipx2p"])
    assert meta["loras"][0]["strength_model"] == 0.5 and meta["embeddings"] == ["style.safetensors"]
