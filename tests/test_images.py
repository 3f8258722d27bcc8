import io
import os
from pathlib import Path

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


# --- Decoding only the formats we name; every malformed file is one FeatvisError (issue 12, item 4) ---------

def _encoded(fmt: str, size: tuple[int, int] = (24, 20), mode: str = "RGB", **kw) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_malformed_ppm_header_is_one_line(tmp_path):
    path = tmp_path / "bad.ppm"
    path.write_bytes(b"P6\n64Y48\n255\n" + bytes(64 * 48 * 3))
    with pytest.raises(fv.FeatvisError, match=r"bad\.ppm.*corrupt") as e:
        fv.load_image(path)
    assert "\n" not in str(e.value)


def test_only_the_named_formats_are_decoded(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    from featvis.images import ACCEPTED_FORMATS

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    eps = tmp_path / "drawing.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
                    b"newpath 0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n")
    listed = ", ".join(ACCEPTED_FORMATS)
    assert listed == "JPEG, PNG, WEBP, TIFF, BMP, GIF, PPM"
    for src in (eps, _encoded("SGI"), _encoded("TGA"), _encoded("PCX")):
        with pytest.raises(fv.FeatvisError, match=rf"not an image featvis can read \({listed}\)"):
            fv.load_image(src)
    assert calls == []  # Ghostscript (an external program) was never asked to render the EPS


def test_suffixes_match_the_accepted_formats(tmp_path):
    from featvis.images import ACCEPTED_FORMATS, IMAGE_SUFFIXES

    Image.init()
    registered = Image.registered_extensions()
    assert {registered[s] for s in IMAGE_SUFFIXES} == set(ACCEPTED_FORMATS)
    assert {s for suffixes in ACCEPTED_FORMATS.values() for s in suffixes} == IMAGE_SUFFIXES
    for fmt, suffixes in ACCEPTED_FORMATS.items():  # each named format really loads, under each of its suffixes
        for suffix in suffixes:
            (tmp_path / f"{fmt}{suffix}").write_bytes(_encoded(fmt, mode="L" if suffix == ".pgm" else "RGB"))
    files = image_files([tmp_path])
    assert sorted(f.name for f in files) == sorted(f"{f}{s}" for f, ss in ACCEPTED_FORMATS.items() for s in ss)
    for f in files:
        x = fv.load_image(f)
        assert x.shape == (1, 3, 20, 24) and x.dtype == torch.float32


def _mutate(data: bytes, rng) -> bytes:
    """One random corruption: byte overwrites (often in the header), truncation, insertion, deletion, bit flips."""
    d = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            d[rng.randrange(min(len(d), 64) if rng.random() < 0.5 else len(d))] = rng.randrange(256)
    elif kind == 1:
        d = d[: rng.randrange(1, len(d))]
    elif kind == 2:
        i = rng.randrange(len(d))
        d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:
        i = rng.randrange(len(d))
        del d[i:i + rng.randint(1, 16)]
    elif kind == 4:  # header fields set to extremes
        i = rng.randrange(min(len(d), 128))
        d[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"9999", b"-1 \n"])
    else:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
    return bytes(d)


FUZZ_ROUNDS = 300  # mutations per seed file
FUZZ_SEEDS = [pytest.param("jpeg", marks=pytest.mark.slow), "png", "ppm", "pgm", "sgi", "tiff", "tiff-lzw", "gif", "bmp", "webp"]


def _fuzz_seed(name: str) -> bytes:
    """The bundled JPEG, a PNG made from it, and small files in the formats PIL has thrown non-OSErrors for."""
    photo = fv.samples.path("chelsea").read_bytes()
    if name == "jpeg":
        return photo
    if name == "png":
        buf = io.BytesIO()
        Image.open(io.BytesIO(photo)).convert("RGB").resize((48, 32)).save(buf, format="PNG")
        return buf.getvalue()
    fmt = {"pgm": "PPM", "tiff-lzw": "TIFF"}.get(name, name.upper())
    return _encoded(fmt, mode="L" if name == "pgm" else "RGB",
                    **({"compression": "tiff_lzw"} if name == "tiff-lzw" else {}))


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # PIL warns about the corrupt EXIF/tags it skips
@pytest.mark.parametrize("name", FUZZ_SEEDS)
def test_fuzzed_files_give_a_tensor_or_one_featvis_error(name, tmp_path):
    import random

    data = _fuzz_seed(name)
    rng = random.Random(f"featvis-fuzz-{name}")  # seeded: a failure names a reproducible (name, i)
    outcomes = {"tensor": 0, "error": 0}
    for i in range(FUZZ_ROUNDS):
        mutated = _mutate(data, rng)
        src: bytes | os.PathLike = mutated
        if i % 10 == 0:  # the file path goes through the same decoding
            src = tmp_path / f"{name}-{i}.img"
            src.write_bytes(mutated)
        try:
            x = fv.load_image(src, max_pixels=4_000_000)
        except fv.FeatvisError as e:
            assert "\n" not in str(e) and str(e), (name, i)
            outcomes["error"] += 1
            continue
        lo, hi = torch.aminmax(x)  # NaN would fail the comparisons too
        assert x.dtype == torch.float32 and x.shape[:2] == (1, 3) and min(x.shape[-2:]) >= 8, (name, i)
        assert 0 <= lo <= hi <= 1, (name, i)
        outcomes["tensor"] += 1
    assert sum(outcomes.values()) == FUZZ_ROUNDS
    assert outcomes["error"] > FUZZ_ROUNDS // 10, outcomes  # the mutations really break files
    if name == "sgi":  # not an accepted format: refused whole
        assert outcomes["tensor"] == 0
    else:  # and some still decode (PNG's checksums make that rare)
        assert outcomes["tensor"] > 0, outcomes


# --- File names that are not UTF-8 (issue 12, item 5) -------------------------------------------------------

def test_display_path_is_printable():
    from featvis.images import display_path

    assert display_path("plain/cat.jpg") == "plain/cat.jpg"
    assert display_path(os.fsdecode(b"dir/bad\xff.png")) == "dir/bad\\xff.png"
    assert display_path(b"dir/bad\xff.png") == "dir/bad\\xff.png"
    assert display_path(Path("new\nline\x1b[31m.png")) == "new\\nline\\x1b[31m.png"
    assert display_path("caf\u00e9 \u732b.jpg") == "caf\u00e9 \u732b.jpg"  # valid non-ASCII stays readable
    assert display_path("\u202egnp.exe") == "\\u202egnp.exe"  # a right-to-left override cannot disguise a name


def test_non_utf8_file_names(tmp_path):
    folder = os.fsencode(tmp_path)
    good = os.path.join(folder, b"bad\xff.png")
    Image.new("RGB", (16, 12), (10, 20, 30)).save(os.fsdecode(good), format="PNG")
    broken = os.path.join(folder, b"broken\xfe.jpg")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    files = image_files([tmp_path])
    assert [os.fsencode(f.name) for f in files] == [b"bad\xff.png", b"broken\xfe.jpg"]
    x = fv.load_image(files[0])
    assert x.shape == (1, 3, 12, 16) and x[0, :, 0, 0].mul(255).round().tolist() == [10, 20, 30]
    with pytest.raises(fv.FeatvisError) as e:
        fv.load_image(files[1])
    message = str(e.value)
    assert "broken\\xfe.jpg" in message
    message.encode("utf-8")  # printable on any UTF-8 terminal or log (a raw surrogate would raise here)
    with pytest.raises(fv.FeatvisError, match=r"bad\\xff-missing\.png.*does not exist") as e:
        fv.load_image(os.fsdecode(os.path.join(folder, b"bad\xff-missing.png")))
    str(e.value).encode("utf-8")


# --- Float dtypes other than float32 (issue 12, item 8) -------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_give_the_float32_answer(dtype):
    from _models import TinyConvNet

    clf = fv.Classifier.wrap(TinyConvNet().eval(), labels=list("abcd"), input_size=32)
    x = fv.quantize(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).to(dtype)
    ref = x.float()  # the same pixel values in float32 (exact for every one of these dtypes)
    assert check_images(x).dtype == torch.float32 and torch.equal(check_images(x), ref)
    assert torch.equal(to_tensor(x), ref) and torch.equal(fv.load_image(x), ref)
    maps = fv.saliency(clf, x, [0, 1], method="gradient")
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, fv.saliency(clf, ref, [0, 1], method="gradient"), rtol=1e-5, atol=1e-7)
    fooled, expected = fv.fool(clf, x, [2, 3], method="pgd", steps=2), fv.fool(clf, ref, [2, 3], method="pgd", steps=2)
    assert fooled.images.dtype == torch.float32
    torch.testing.assert_close(fooled.images, expected.images, rtol=0, atol=1 / 255)  # same 8-bit image
    assert fooled.success.tolist() == expected.success.tolist()
    got, want = clf.predict(x, k=4), clf.predict(ref, k=4)
    assert [[p.index for p in row] for row in got] == [[p.index for p in row] for row in want]
    assert [p.prob for row in got for p in row] == pytest.approx([p.prob for row in want for p in row], abs=1e-6)


def test_a_float64_model_keeps_its_dtype():
    from _models import TinyConvNet

    clf = fv.Classifier.wrap(TinyConvNet().double().eval(), labels=list("abcd"), input_size=16).double()
    x = torch.rand(1, 3, 16, 16)
    for images in (x, x.double(), x.half()):  # converted to the model's dtype where the classifier is known
        maps = fv.saliency(clf, images, 0)
        assert maps.dtype == torch.float64
        assert clf.predict(images, k=1)[0][0].index == clf.predict(x.double(), k=1)[0][0].index
