"""One rule set for user-supplied names under a folder (ipx2p_core.paths), as models, LoadImage and the studio use it."""

from __future__ import annotations

import os

import pytest

from ipx2p_core.paths import contained_path
from ipx2p_nodes.host import find_model


@pytest.mark.parametrize("parts", [("..",), ("../x",), ("a/../../x",), ("/etc/passwd",), ("..\\x",), ("a\\..\\..\\x",),
                                   ("C:\\Windows",), ("c:x",), ("x\x00y",), ("", "../x"), ("a", "../../x"),
                                   ("\\\\server\\share",)])
@pytest.mark.parametrize("follow_links", [False, True])
def test_contained_path_refuses(tmp_path, parts, follow_links):
    assert contained_path(tmp_path, *parts, follow_links=follow_links) is None


def test_contained_path_accepts_and_resolves(tmp_path):
    (tmp_path / "a").mkdir()
    assert contained_path(tmp_path, "a", "b.png") == (tmp_path / "a" / "b.png").resolve()
    assert contained_path(tmp_path, "a\\b.png") == (tmp_path / "a" / "b.png").resolve()
    assert contained_path(tmp_path, "", allow_root=True) == tmp_path.resolve()
    assert contained_path(tmp_path, "") is None


def test_symlinks_leaving_the_folder_are_refused_unless_followed(tmp_path):
    """The studio's folders refuse a link that leads out; a models folder follows links placed inside it (users
    link big models in from other disks)."""
    outside = tmp_path / "elsewhere" / "big.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    root = tmp_path / "models"
    root.mkdir()
    os.symlink(outside, root / "linked.safetensors")
    assert contained_path(root, "linked.safetensors") is None
    followed = contained_path(root, "linked.safetensors", follow_links=True)
    assert followed == root / "linked.safetensors" and followed.read_bytes() == b"x"


def test_find_model_searches_the_roots_in_order_and_never_climbs_out(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    for root in (first, second):
        (root / "sub").mkdir(parents=True)
    (second / "sub" / "m.safetensors").write_bytes(b"2")
    (tmp_path / "secret.safetensors").write_bytes(b"s")
    assert find_model([first, second], "sub/m.safetensors") == second / "sub" / "m.safetensors"
    (first / "sub" / "m.safetensors").write_bytes(b"1")
    assert find_model([first, second], "sub/m.safetensors") == first / "sub" / "m.safetensors"
    for name in ("../secret.safetensors", str(tmp_path / "secret.safetensors"), "sub/../../secret.safetensors",
                 "missing.safetensors", ""):
        assert find_model([first, second], name) is None, name
