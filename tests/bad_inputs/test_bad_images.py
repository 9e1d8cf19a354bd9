"""Images: 16-bit and float greyscale scaled (never clipped to white) in every image path, and a
decompression bomb refused with one line naming the file, or skipped and reported in a folder."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from openmusk.core.images import ImageError, open_image, to_rgb

from bad_files import TINY, sixteen_bit_gradient


def _mean(img: Image.Image) -> float:
    assert img.mode == "RGB"
    return float(np.asarray(img, dtype=np.float64).mean())


@pytest.mark.parametrize("name", ["grey16", "grey16_be", "float"])
def test_high_bit_depth_files_are_scaled_not_white(bad_images, name):
    img = open_image(bad_images[name])
    # the ramp spans the full range: mean 127.5 when scaled, 254.4 when clipped (the old bug)
    assert abs(_mean(img) - 127.5) < 0.6
    arr = np.asarray(img)[..., 0].ravel()
    assert arr[0] == 0 and arr[-1] == 255 and np.all(np.diff(arr.astype(int)) >= 0)


def test_in_memory_16bit_images_reach_the_model_scaled():
    """The API path (a PIL image handed to a transform) scales as well: MUSK's transform and to_rgb."""
    from openmusk.data.transforms import to_tensor

    img = Image.fromarray(sixteen_bit_gradient())
    assert img.mode in ("I;16", "I")
    assert abs(float(to_tensor(img).mean()) - 0.5) < 0.01
    assert abs(_mean(to_rgb(img)) - 127.5) < 0.6
    assert _mean(to_rgb(Image.fromarray(np.full((4, 4), 70000, np.int32)))) == 0.0  # constant out of range


def test_every_image_reader_scales_16bit(bad_images, tmp_path):
    """Embed / eval datasets, plain-image slides, VQA rows and make-shards all decode through the one opener."""
    from openmusk.data.datasets import ImageFilesDataset
    from openmusk.eval.vqa.data import _FileImages
    from openmusk.pretrain.data import make_shards
    from openmusk.slide.reader import open_slide

    path = bad_images["grey16"]
    assert abs(_mean(ImageFilesDataset([path]).load_image(0)) - 127.5) < 0.6
    assert abs(_mean(to_rgb(_FileImages([str(path)])(0))) - 127.5) < 0.6
    with open_slide(path, default_mpp=0.5) as slide:
        region = slide.read_region((0, 0), (48, 48)).convert("RGB")
    assert abs(_mean(region) - 127.5) < 0.6
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(path.read_bytes())
    res = make_shards(folder, str(tmp_path / "shards" / "s-%06d.tar"), kind="images")
    with tarfile.open(res["shards"][0]) as tf:
        jpg = tf.extractfile(tf.getmembers()[0]).read()
    assert abs(_mean(Image.open(io.BytesIO(jpg)).convert("RGB")) - 127.5) < 2.0  # JPEG round trip


def test_bomb_and_broken_files_are_named(bad_images):
    for name, words in (("bomb", "decompression bomb"), ("truncated", "cannot read image")):
        with pytest.raises(ImageError) as e:
            open_image(bad_images[name])
        assert str(bad_images[name]) in str(e.value) and words in str(e.value)
    with pytest.raises(ImageError, match="no such image file"):
        open_image(bad_images["good"].with_name("missing.png"))


def test_make_shards_skips_a_bomb_and_keeps_the_rest(bad_images, tmp_path, capsys):
    from openmusk.pretrain.data import make_shards

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("good", "bomb", "truncated"):
        (folder / bad_images[name].name).write_bytes(bad_images[name].read_bytes())
    res = make_shards(folder, str(tmp_path / "out" / "s-%06d.tar"), kind="images")
    assert res["written"] == 1 and len(res["skipped"]) == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "decompression bomb" in err and "truncated.jpg" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s-000000.tar"]  # no temp file left


def test_zeroshot_and_slide_info_refuse_a_bomb_in_one_line(bad_images, cli):
    bomb = str(bad_images["bomb"])
    cli("zeroshot", bomb, "--labels", "tumour,stroma", "--weights", TINY).clear_error(bomb, "decompression bomb")
    cli("slide", "info", bomb, "--mpp", "0.5").clear_error(bomb, "decompression bomb")
