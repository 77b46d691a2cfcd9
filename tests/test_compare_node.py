"""Compare Before/After (IPX2PCompare): writes both sides to the host's temp folder and reports them as ui outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ipx2p_nodes
from ipx2p_core import IP2PError
from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.host import StandaloneHost
from ipx2p_standalone.runner import Runner


@pytest.fixture()
def host(tmp_path):
    previous = get_host()
    h = StandaloneHost(models_dir=tmp_path / "models", device="cpu")
    set_host(h)
    yield h
    set_host(previous)


def test_compare_writes_both_sides_and_pairs_a_batch(host, tmp_path):
    host.temp_folder = tmp_path / "temp"
    before = torch.rand(1, 8, 12, 3)
    after = torch.rand(3, 8, 12, 3)
    out = ipx2p_nodes.NODE_CLASS_MAPPINGS["IPX2PCompare"]().compare(before, after)["ui"]
    assert [len(out["ipx2p_before"]), len(out["ipx2p_after"])] == [1, 3]
    for ref in out["ipx2p_before"] + out["ipx2p_after"]:
        assert ref["type"] == "temp" and ref["subfolder"] == ""
    saved = np.asarray(Image.open(host.temp_dir() / out["ipx2p_after"][2]["filename"]))
    assert saved.shape == (8, 12, 3)
    assert np.abs(saved.astype(np.float64) - np.round(after[2].numpy() * 255)).max() <= 1


def test_compare_without_a_temp_folder_says_so(host):
    with pytest.raises(IP2PError, match="temp folder"):
        ipx2p_nodes.NODE_CLASS_MAPPINGS["IPX2PCompare"]().compare(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3))


def test_runner_lends_its_temp_folder_to_a_host_without_one(host, tmp_path):
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    runner = Runner(input_dir=tmp_path, output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", host=host)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
              "2": {"class_type": "IPX2PCompare", "inputs": {"before": ["1", 0], "after": ["1", 0]}}}
    result = runner.run(prompt)
    ui = result.outputs["2"]
    assert (tmp_path / "temp" / ui["ipx2p_before"][0]["filename"]).is_file()
    assert (tmp_path / "temp" / ui["ipx2p_after"][0]["filename"]).is_file()
    assert host.temp_dir() == tmp_path / "temp" == runner.folders.temp


def test_runner_and_host_share_one_temp_folder(tmp_path):
    host = StandaloneHost(models_dir=tmp_path / "models", temp_dir=tmp_path / "preview")
    assert Runner(input_dir=tmp_path, output_dir=tmp_path / "out", host=host).folders.temp == tmp_path / "preview"
    with pytest.raises(ValueError, match=r"temp_dir .*other.* differs from its host's temp folder .*preview"):
        Runner(input_dir=tmp_path, output_dir=tmp_path / "out", temp_dir=tmp_path / "other", host=host)
