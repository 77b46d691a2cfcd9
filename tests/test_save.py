"""Save LoRA Stack / Save Merged Model (nodes) and `ipx2p save-lora` / `ipx2p merge` (CLI): what they write reloads
in this engine and in diffusers to the same output; names stay inside their folder; nothing is replaced unless asked
(issue 12.9)."""

from __future__ import annotations

import os

import pytest

import adapter_files as af
import ipx2p_nodes
from ipx2p_core import IP2PError, apply_embedding, apply_lora, load_model
from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.host import StandaloneHost
from test_lora import TOL, diffusers_loras, max_diff, new_pipeline, ours, sd, theirs, weights  # noqa: F401 (sd)


@pytest.fixture()
def host(tmp_path):
    h = StandaloneHost(models_dir=tmp_path / "models", device="cpu")
    previous = get_host()
    set_host(h)
    yield h
    set_host(previous)


@pytest.fixture(scope="module")
def lora_file(sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("save_lora") / "style.safetensors"
    return af.write(af.to_kohya(af.random_lora(sd["model"], seed=4, alpha=2.0), False, sd["model"].unet), path)


def node(name):
    return ipx2p_nodes.NODE_CLASS_MAPPINGS[name]()


def test_save_lora_stack_node_writes_a_file_diffusers_and_we_reload(host, sd, lora_file, photo):
    handle = apply_lora(sd["model"], lora_file, 0.7, 0.4)
    out = node("IPX2PSaveLoRAStack").save(handle, "styles/winter")
    assert out == {"ui": {"text": ["loras/styles/winter.safetensors"]}, "result": ()}
    saved = host.models_dir / "loras" / "styles" / "winter.safetensors"
    assert sorted(p.name for p in saved.parent.iterdir()) == ["winter.safetensors"]  # no staging left behind
    got = ours(handle, photo)
    assert max_diff(ours(apply_lora(sd["model"], saved), photo), got) <= TOL
    with diffusers_loras(sd["pipe"], (saved, "s", weights(sd, 1.0, 1.0))) as pipe:
        assert max_diff(theirs(pipe, photo), got) <= TOL
    assert "styles/winter.safetensors" in host.list_models("loras")  # Apply LoRA lists it

    # never replaced without the flag; replaced with it
    before = saved.read_bytes()
    with pytest.raises(IP2PError) as err:
        node("IPX2PSaveLoRAStack").save(apply_lora(sd["model"], lora_file, 0.3), "styles/winter")
    assert str(err.value) == (f"{saved} exists already. Set the node's overwrite input to replace it, or choose "
                              "another name.")
    assert saved.read_bytes() == before
    node("IPX2PSaveLoRAStack").save(apply_lora(sd["model"], lora_file, 0.3), "styles/winter", overwrite=True)
    assert saved.read_bytes() != before


@pytest.mark.parametrize("name", ["../outside", "/abs/path", "a/../../b", ".hidden", "", "  "])
def test_save_nodes_refuse_names_outside_their_folder(host, name):
    save_lora, save_merged = (ipx2p_nodes.NODE_CLASS_MAPPINGS[c] for c in ("IPX2PSaveLoRAStack", "IPX2PSaveMergedModel"))
    for message, folder in ((save_lora.VALIDATE_INPUTS(filename=name), "loras"),
                            (save_merged.VALIDATE_INPUTS(filename=name, format="diffusers"), "diffusers"),
                            (save_merged.VALIDATE_INPUTS(filename=name, format="single_file"), "checkpoints")):
        assert message.startswith(f"Cannot save as {name!r}: give a name inside {host.models_dir / folder} ")
    assert save_lora.VALIDATE_INPUTS(filename="ok/name") is True
    assert save_merged.VALIDATE_INPUTS(filename="ok/name", format="single_file") is True
    assert save_merged.VALIDATE_INPUTS(filename="ok", format="ckpt") == "format: 'ckpt' is not one of diffusers, single_file."


def test_save_merged_model_node_folder_and_single_file(host, sd, lora_file, photo):
    emb = af.write_embedding(host.models_dir.parent / "ice.safetensors", "diffusers_safetensors",
                             af.random_vectors(32, 2, seed=8), token="<ice>")
    handle = apply_embedding(apply_lora(sd["model"], lora_file, 0.8, 0.6), emb)
    prompt = "make it <ice> winter"
    out = node("IPX2PSaveMergedModel").save(handle, "merged", "diffusers")
    assert out["ui"]["text"] == ["diffusers/merged"]
    folder = host.models_dir / "diffusers" / "merged"
    assert [p.name for p in folder.parent.iterdir()] == ["merged"]
    got = ours(handle, photo, prompt)
    assert max_diff(ours(load_model(folder, cache=None), photo, prompt), got) <= TOL
    assert max_diff(theirs(new_pipeline(folder, "sd15"), photo, prompt), got) <= TOL
    assert "merged" in host.list_models("diffusers")
    with pytest.raises(IP2PError, match="exists already"):
        node("IPX2PSaveMergedModel").save(handle, "merged", "diffusers")
    node("IPX2PSaveMergedModel").save(handle, "merged", "diffusers", overwrite=True)
    assert [p.name for p in folder.parent.iterdir()] == ["merged"]

    lora_only = apply_lora(sd["model"], lora_file, 0.8, 0.6)
    out = node("IPX2PSaveMergedModel").save(lora_only, "merged", "single_file")
    assert out["ui"]["text"] == ["checkpoints/merged.safetensors"]
    single = host.models_dir / "checkpoints" / "merged.safetensors"
    assert max_diff(ours(load_model(single, config=sd["config"], cache=None), photo), ours(lora_only, photo)) <= TOL


def test_cli_save_lora_and_merge(sd, lora_file, tmp_path, photo, capsys):
    from ipx2p_standalone.cli import main

    out = tmp_path / "stack.safetensors"
    args = ["save-lora", "-m", str(sd["folder"]), "--lora", f"{lora_file}:0.7:0.4", "-o", str(out), "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    want = ours(apply_lora(sd["model"], lora_file, 0.7, 0.4), photo)
    assert max_diff(ours(apply_lora(sd["model"], out), photo), want) <= TOL
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (f"error: {out} exists already. Set --overwrite to replace it, or "
                                               "choose another name.")
    assert main([*args, "--overwrite"]) == 0

    merged = tmp_path / "merged"
    assert main(["merge", "-m", str(sd["folder"]), "--lora", f"{lora_file}:0.7:0.4", "-o", str(merged), "-q"]) == 0
    assert max_diff(ours(load_model(merged, cache=None), photo), want) <= TOL
    assert max_diff(theirs(new_pipeline(merged, "sd15"), photo), want) <= TOL
    single = tmp_path / "merged.safetensors"
    assert main(["merge", "-m", str(sd["folder"]), "--lora", f"{lora_file}:0.7:0.4", "-o", str(single),
                 "--format", "single_file", "-q"]) == 0
    assert max_diff(ours(load_model(single, config=sd["config"], cache=None), photo), want) <= TOL
    assert main(["save-lora", "-m", str(sd["folder"]), "-o", str(tmp_path / "none.safetensors"), "-q"]) == 2
    assert "no LoRAs applied" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "none.safetensors")
