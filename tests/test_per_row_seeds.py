"""Per-row seeds (``SamplerSettings.seeds``): a row in a batch gets exactly the noise it would get alone, so a batch
of edits gives each row's single-edit result (starting noise and the step noise of ancestral/SDE schedulers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ipx2p_core import IP2PError, SamplerSettings, decode_latents, encode_image, encode_instruction, load_model, sample
from ipx2p_core.sampling import MAX_SEED


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return load_model(tiny_sd["folder"], cache=None)


@pytest.fixture(scope="module")
def xl(tiny_sdxl):
    return load_model(tiny_sdxl["folder"], cache=None)


def _photos(photo, n):
    arr = np.asarray(photo)
    return [Image.fromarray(np.roll(arr, 5 * k, axis=1)) for k in range(n)]


def _alone_and_batched(model, photos, texts, settings, seeds, mask=None):
    """(each row edited alone with its seed, the rows edited in one batch with per-row seeds), as pixels."""
    alone = []
    for img, text, seed in zip(photos, texts, seeds):
        lat = sample(model, encode_instruction(model, text), encode_image(model, img, mask=mask),
                     settings.with_(seed=seed))
        alone.append(decode_latents(model, lat.samples, region=lat.region))
    lat = sample(model, encode_instruction(model, texts), encode_image(model, photos, mask=mask),
                 settings.with_(seed=0, seeds=tuple(seeds)))
    return torch.cat(alone), decode_latents(model, lat.samples, region=lat.region)


@pytest.mark.parametrize("scheduler,extra", [
    ("euler_a", {}),  # ancestral: fresh noise from the generator(s) at every step
    ("ddim", {"eta": 0.7}),  # DDIM with eta > 0 draws variance noise per step
])
def test_batch_rows_equal_rows_alone_sd(sd, photo, scheduler, extra):
    photos = _photos(photo, 3)
    texts = ["make it winter", "make it a statue", "make it winter"]
    s = SamplerSettings(steps=3, scheduler=scheduler, **extra)
    alone, batched = _alone_and_batched(sd, photos, texts, s, [7, 123, 2**64 - 1])
    assert float((alone - batched).abs().max()) <= 1e-4
    assert float((alone[0] - alone[2]).abs().max()) > 1e-2  # the rows really differ (distinct seeds and images)


def test_batch_rows_equal_rows_alone_sdxl_with_strength_and_mask(xl, photo):
    """The noised start of strength < 1 and the masked re-noising use each row's own noise too."""
    mask = np.zeros((32, 44), np.uint8)
    mask[4:24, 8:36] = 255
    s = SamplerSettings(steps=4, strength=0.6)
    alone, batched = _alone_and_batched(xl, _photos(photo, 2), ["make it winter", "add snow"], s, [3, 4],
                                        mask=Image.fromarray(mask))
    assert float((alone - batched).abs().max()) <= 1e-4


def test_one_seed_in_seeds_is_bit_identical_to_seed(sd, photo):
    cond, img = encode_instruction(sd, "make it winter"), encode_image(sd, photo)
    a = sample(sd, cond, img, SamplerSettings(steps=3, seed=11)).samples
    b = sample(sd, cond, img, SamplerSettings(steps=3, seed=999, seeds=(11,))).samples
    assert torch.equal(a, b)


def test_seeds_cover_images_per_instruction(sd, photo):
    """With several images per instruction, seeds are per output row: (pair, image) in output order."""
    cond, img = encode_instruction(sd, "x"), encode_image(sd, photo)
    s = SamplerSettings(steps=2, images_per_instruction=2)
    both = decode_latents(sd, sample(sd, cond, img, s.with_(seeds=(5, 6))).samples)
    one = decode_latents(sd, sample(sd, cond, img, s.with_(images_per_instruction=1, seed=6)).samples)
    assert float((both[1:] - one).abs().max()) <= 1e-4


@pytest.mark.parametrize("seeds,message", [
    ((1, 2), "Got 2 seeds for 3 output rows; give one seed per output row (pairs x images per instruction)."),
    ((), "Seeds must be a non-empty tuple of whole numbers (one per output row), got ()."),
    ([1, 2, 3], "Seeds must be a non-empty tuple of whole numbers (one per output row), got [1, 2, 3]."),
    ((1, -2, 3), f"Each of seeds must be a whole number from 0 to {MAX_SEED}, got -2."),
    ((1, 2.5, 3), f"Each of seeds must be a whole number from 0 to {MAX_SEED}, got 2.5."),
])
def test_bad_seeds_are_clear_errors(sd, photo, seeds, message):
    cond, img = encode_instruction(sd, ["a", "b", "c"]), encode_image(sd, _photos(photo, 3))
    with pytest.raises(IP2PError) as info:
        sample(sd, cond, img, SamplerSettings(steps=1, seeds=seeds))
    assert str(info.value) == message
