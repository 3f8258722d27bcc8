import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

import featvis as fv
from featvis.images import check_images, image_files, open_image, quantize, to_tensor


def _save(im, tmp_path, name, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 128, (128, 128, 128)),
    ("1", 1, (255, 255, 255)),
    ("I;16", 32896, (128, 128, 128)),
    ("I", 65535, (255, 255, 255)),
    ("F", 0.5, (128, 128, 128)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent: shown over white
    ("LA", (0, 255), (0, 0, 0)),
])
def test_every_mode_becomes_rgb(mode, value, expected):
    im = Image.new(mode, (16, 12), value)
    rgb = open_image(im)
    assert rgb.mode == "RGB" and rgb.size == (16, 12)
    assert rgb.getpixel((3, 3)) == pytest.approx(expected, abs=1)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (16, 16), 0)
    im.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    path = _save(im, tmp_path, "p.png", transparency=0)
    assert open_image(path).getpixel((0, 0)) == (255, 255, 255)
    path2 = _save(im, tmp_path, "p2.png")
    assert open_image(path2).getpixel((0, 0)) == (10, 20, 30)


def test_16bit_png_file(tmp_path):
    arr = np.full((10, 20), 65535 // 4, dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path, "deep.png")
    x = fv.load_image(path)
    assert x.shape == (1, 3, 10, 20)
    assert x.mean().item() == pytest.approx(0.25, abs=1 / 255)


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    path = _save(im, tmp_path, "rot.jpg", exif=exif, quality=95)
    shown = open_image(path)
    assert shown.size == (20, 40)
    r, _, b = shown.getpixel((10, 2))
    assert b > 200 and r < 60  # the blue strip is now at the top


def test_load_resizes_and_crops_like_the_model(clf):
    x = fv.load_image(fv.samples.path("coffee"), clf)
    assert x.shape == (1, 3, 224, 224) and x.min() >= 0 and x.max() <= 1
    arr = np.asarray(Image.open(fv.samples.path("coffee")))
    y = fv.load_image(arr, clf)  # numpy path uses the tensor resize
    assert y.shape == x.shape
    assert (x - y).abs().mean() < 0.02


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image featvis can read"),
])
def test_bad_files_one_line(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(fv.FeatvisError, match=match) as e:
        fv.load_image(path)
    assert "\n" not in str(e.value)


def test_truncated_jpeg(tmp_path):
    data = (fv.samples.path("chelsea")).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(fv.FeatvisError, match="truncated or corrupt"):
        fv.load_image(path)


def test_decompression_bomb(tmp_path):
    path = _save(Image.new("1", (10_000, 10_000)), tmp_path, "bomb.png", optimize=True)
    assert os.path.getsize(path) < 200_000  # tiny file, 100 Mpx when decoded
    with pytest.raises(fv.FeatvisError, match="too large|over the limit"):
        fv.load_image(path)


def test_too_small_missing_and_folder(tmp_path):
    with pytest.raises(fv.FeatvisError, match=r"only 1×1 pixels"):
        fv.load_image(_save(Image.new("RGB", (1, 1)), tmp_path, "dot.png"))
    with pytest.raises(fv.FeatvisError, match="does not exist"):
        fv.load_image(tmp_path / "nope.png")
    with pytest.raises(fv.FeatvisError, match="is a folder"):
        fv.load_image(tmp_path)


def test_tensor_checks():
    with pytest.raises(fv.FeatvisError, match="NaN or infinite"):
        check_images(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(fv.FeatvisError, match=r"span \[-\d.*pass un-normalized"):
        check_images(torch.randn(1, 3, 16, 16) * 2)
    with pytest.raises(fv.FeatvisError, match=r"expected \[B, 3, H, W\]"):
        check_images(torch.rand(1, 4, 16, 16))
    x = to_tensor(torch.full((16, 16), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 16, 16) and x.min() == 1.0
    with pytest.raises(fv.FeatvisError, match="NaN"):
        to_tensor(np.full((16, 16, 3), np.inf, dtype=np.float32))


def test_save_image_is_atomic_and_exact(tmp_path):
    x = quantize(torch.rand(1, 3, 20, 30))
    path = fv.save_image(x, tmp_path / "sub" / "out.png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]
    torch.testing.assert_close(fv.load_image(path), x, atol=0, rtol=0)
    # bytes input works too
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(buf, format="PNG")
    assert fv.load_image(buf.getvalue())[0, :, 0, 0].mul(255).round().tolist() == [1, 2, 3]


def test_image_files_expands_folders(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.png", "a/2.JPG", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    (tmp_path / "a" / "notes.txt").write_text("x")
    files = image_files([tmp_path / "a", tmp_path / "b.png"])
    assert [f.name for f in files] == ["1.png", "2.JPG", "b.png"]
    with pytest.raises(fv.FeatvisError, match="holds no image"):
        image_files([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_samples():
    assert set(fv.samples.names()) >= {"chelsea", "coffee", "grace_hopper"}
    assert (fv.samples.path("chelsea").parent / "NOTICE").exists()
    with pytest.raises(fv.FeatvisError, match="did you mean 'chelsea'"):
        fv.samples.path("chelsae")
