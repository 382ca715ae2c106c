import random

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clipforge.training.augment import TrainTransform, crop_box, normalizer


def test_crop_box_respects_scale_and_bounds():
    rng = random.Random(0)
    for _ in range(200):
        x0, y0, x1, y1 = crop_box(64, 48, (0.9, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
        assert (x1 - x0) * (y1 - y0) >= 0.85 * 64 * 48


def test_uint8_then_batched_normalise_equals_open_clip_eval_pipeline_on_full_crop():
    im = Image.new("RGB", (32, 32))
    im.putdata([(i % 256, (3 * i) % 256, (7 * i) % 256) for i in range(32 * 32)])
    t = TrainTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop is the whole image
    ours = normalizer({"mean": PreprocessCfg().mean, "std": PreprocessCfg().std}, torch.device("cpu"))(t(im)[None])[0]
    ref = image_transform_v2(PreprocessCfg(size=32), is_train=False)(im)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_output_is_uint8_chw():
    out = TrainTransform(24)(Image.new("RGB", (100, 60), (1, 2, 3)))
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8 and out[:, 5, 5].tolist() == [1, 2, 3]
