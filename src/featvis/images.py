"""Loading, validating, resizing and saving images. The only module (besides figures) that touches PIL.

Images inside featvis are float tensors [B, 3, H, W] in [0, 1]. Everything a user may hand us — a path, PIL
image, numpy array or tensor, in any PIL mode — becomes that here, or fails with one line saying why.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from featvis.errors import SHOWN_PATH_CHARS, FeatvisError, display_path, path_kind

MAX_PIXELS = 64_000_000  # 8000×8000; larger files are refused as possible decompression bombs
MIN_SIDE = 8  # smaller images carry no usable content for an ImageNet model
DRAFT_MARGIN = 2  # a large JPEG is decoded at a reduced scale down to twice the short side it will be resized to
# The only formats decoded, with the file suffixes a folder is searched for (Pillow's names and suffixes). PIL can
# try ~40 others, some through external programs (EPS runs Ghostscript) or seldom-fuzzed plugins; they are refused.
ACCEPTED_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),  # the Netpbm family
}
IMAGE_SUFFIXES = frozenset(s for suffixes in ACCEPTED_FORMATS.values() for s in suffixes)
_ANY_RANGE: ContextVar[bool] = ContextVar("featvis_any_range", default=False)
# What PIL raises for malformed files besides OSError; found by fuzzing (tests/test_images.py). A decoder bug must
# cost one file, not a batch or a web request.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, LookupError, TypeError, ArithmeticError,
                  MemoryError, Image.DecompressionBombError)
_ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white, as in most viewers

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray | torch.Tensor


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_image(src: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB, honouring EXIF orientation and converting any mode.

    Only `ACCEPTED_FORMATS` are decoded; anything else, and any file PIL fails on, is one FeatvisError.
    `min_side`: the short side the caller will resize to; a JPEG much larger than that is decoded at a reduced
    scale (libjpeg's DCT scaling, to at least twice `min_side`), which needs a fraction of the memory and time.
    """
    if isinstance(src, Image.Image):
        return _decode(src, "<PIL image>", max_pixels)
    if isinstance(src, bytes):
        if not src:
            raise FeatvisError("image data is empty (0 bytes)")
        return _decode(_identify(io.BytesIO(src), "<bytes>", max_pixels), "<bytes>", max_pixels, min_side)
    name = f"'{display_path(src, SHOWN_PATH_CHARS)}'"
    path = Path(src)
    kind = path_kind(path, "image")
    if kind == "missing":
        raise FeatvisError(f"image {name} does not exist")
    if kind == "dir":
        raise FeatvisError(f"{name} is a folder; pass image files (the CLI accepts folders)")
    if kind == "other":
        raise FeatvisError(f"{name} is not a regular file (a pipe, socket or device); pass image files")
    try:
        fp = path.open("rb")
    except OSError as e:
        raise FeatvisError(f"cannot read image {name}: {e.strerror or _first_line(e)}") from None
    with fp:
        if os.fstat(fp.fileno()).st_size == 0:
            raise FeatvisError(f"image {name} is an empty file")
        return _decode(_identify(fp, name, max_pixels), name, max_pixels, min_side)


def _identify(fp: io.BufferedIOBase, name: str, max_pixels: int) -> Image.Image:
    """Read the header, trying only the accepted formats."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp, formats=list(ACCEPTED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FeatvisError(f"image {name} is too large (over {max_pixels:,} pixels); downscale it first") from None
    except UnidentifiedImageError:
        raise FeatvisError(f"{name} is not an image featvis can read ({', '.join(ACCEPTED_FORMATS)}); convert it "
                           "to PNG or JPEG") from None
    except _DECODE_ERRORS as e:
        raise FeatvisError(f"image {name} is corrupt ({_first_line(e)}); re-export or re-download it") from None


def _decode(im: Image.Image, name: str, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Check the size, then decode the pixels as RGB."""
    w, h = im.size
    if w * h > max_pixels:
        raise FeatvisError(f"image {name} is {w}×{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; "
                           "downscale it first")
    if min(w, h) < MIN_SIDE:
        raise FeatvisError(f"image {name} is only {w}×{h} pixels; featvis needs at least {MIN_SIDE}×{MIN_SIDE}")
    try:
        if min_side and im.format == "JPEG":
            keep = DRAFT_MARGIN * min_side / min(w, h)  # reduce only while the short side stays >= 2 × min_side
            im.draft("RGB", (math.ceil(w * keep), math.ceil(h * keep)))
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return to_rgb(im)
    except FeatvisError:
        raise
    except _DECODE_ERRORS as e:
        raise FeatvisError(f"image {name} is truncated or corrupt ({_first_line(e)}); re-export or re-download it") \
            from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: alpha over white, 16/32-bit and float scaled from their own range."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in {"I", "F"}:
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise FeatvisError(f"a {mode} image holds NaN or infinite pixel values; fix the file")
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            scale = 1.0 if lo >= 0 and hi <= 1 else 255.0 if lo >= 0 and hi <= 255 else None
            arr = (arr - lo) / max(hi - lo, 1e-12) if scale is None else arr / scale
        else:
            arr = arr / (65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0)
        gray = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """A numpy image HxW, HxWxC (C in 1, 3, 4) as a float tensor [1, 3, H, W] in [0, 1]."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise FeatvisError(f"numpy image has shape {arr.shape}; expected H×W, H×W×1, H×W×3 or H×W×4")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
    else:
        raise FeatvisError(f"numpy image has dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if x.shape[2] == 4:  # alpha over white
        alpha = x[:, :, 3:]
        x = x[:, :, :3] * alpha + (1 - alpha)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    return check_images(t.expand(1, 3, *t.shape[2:]).contiguous(), "numpy image")


def check_images(images: torch.Tensor, what: str = "images", *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Validate a batch [B, 3, H, W] of floats in [0, 1] (uint8 is scaled); return it as `dtype`.

    Floats of another dtype (float64, float16, bfloat16) are converted too: a network refuses inputs that are not
    its own dtype ("expected scalar type Double"). Callers that know the classifier pass its `dtype`.
    """
    if not isinstance(images, torch.Tensor):
        raise FeatvisError(f"{what} must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}; "
                           "use featvis.load_image to read files")
    if not dtype.is_floating_point:
        raise FeatvisError(f"images can only be converted to a float dtype, not {dtype}")
    if images.dtype == torch.uint8:
        images = images.to(dtype) / 255.0
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise FeatvisError(f"{what} have shape {tuple(images.shape)}; expected [B, 3, H, W] RGB")
    if not images.is_floating_point():
        raise FeatvisError(f"{what} have dtype {images.dtype}; expected float in [0, 1] or uint8")
    if images.numel() == 0:
        raise FeatvisError(f"{what} are empty (shape {tuple(images.shape)})")
    if min(images.shape[-2:]) < MIN_SIDE:
        raise FeatvisError(f"{what} are {images.shape[-2]}×{images.shape[-1]}; need at least {MIN_SIDE}×{MIN_SIDE}")
    with torch.no_grad():
        lo_t, hi_t = torch.aminmax(images)  # one pass; NaN and ±inf show up in the extremes
        lo, hi = lo_t.item(), hi_t.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise FeatvisError(f"{what} contain NaN or infinite values")
    if (lo < -1e-4 or hi > 1 + 1e-4) and not _ANY_RANGE.get():
        raise FeatvisError(f"{what} span [{lo:.3g}, {hi:.3g}] but featvis takes pixels in [0, 1] "
                           "(the Classifier normalizes); pass un-normalized images")
    return images.to(dtype)


@contextmanager
def outside_unit_range() -> Iterator[None]:
    """Within it, `check_images` lets values outside [0, 1] through (NaN and infinities are still refused): for
    methods that hand another method images made off the pixel range, such as SmoothGrad's noisy copies, which the
    paper and Captum's NoiseTunnel leave unclipped."""
    token = _ANY_RANGE.set(True)
    try:
        yield
    finally:
        _ANY_RANGE.reset(token)


def to_tensor(src: ImageSource, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Any image source as a float tensor [B, 3, H, W] in [0, 1] (B = 1 except for batched tensors)."""
    if isinstance(src, torch.Tensor):
        t = src.detach()
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3 and t.shape[0] == 1:
            t = t[None]
        if t.ndim == 4 and t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        return check_images(t, "image tensor")
    if isinstance(src, np.ndarray):
        return _array_to_tensor(src)
    im = open_image(src, max_pixels=max_pixels)
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(255.0)


def resize_and_crop(im: Image.Image, size: int, crop_fraction: float = 1.0,
                    interpolation: str = "bicubic") -> Image.Image:
    """Resize the short side to size / crop_fraction (antialiased), then center-crop size × size."""
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(interpolation, Image.BICUBIC)
    w, h = im.size
    short = round(size / crop_fraction)
    scale = short / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def resize(images: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """The tensor version of `resize_and_crop`: short side to size / crop_fraction, center-crop, clamped to
    [0, 1]."""
    h, w = images.shape[-2:]
    short = round(size / crop_fraction)
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False,
                               antialias=scale < 1).clamp_(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top:top + size, left:left + size]


def load_image(src: ImageSource, clf: Any = None, *, size: int | None = None,
               max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Load one image as [1, 3, S, S] in [0, 1], resized and center-cropped the way `clf` expects.

    Args:
        src: a path, bytes, PIL image, numpy array (H×W[×C]) or tensor.
        clf: a Classifier; gives the size, crop and interpolation, and the device of the result.
        size: override the side length (default: the classifier's input size; no resize without either).
        max_pixels: refuse larger files (decompression bombs).

    Example:
        >>> x = load_image("cat.jpg", clf)       # [1, 3, 224, 224]
    """
    pre = getattr(clf, "preprocess", None)
    side = size or (pre.size if pre is not None else None)
    crop = pre.crop_fraction if pre is not None else 1.0
    interp = pre.interpolation if pre is not None else "bicubic"
    if isinstance(src, (torch.Tensor, np.ndarray)):
        x = to_tensor(src, max_pixels=max_pixels)
        x = resize(x, side, crop) if side else x
    else:
        im = open_image(src, max_pixels=max_pixels, min_side=round(side / crop) if side else None)
        if side:
            im = resize_and_crop(im, side, crop, interp)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float().div_(255.0)
    device = getattr(clf, "device", None)
    return x.to(device) if device is not None else x


def load_images(srcs: Sequence[ImageSource], clf=None, *, size: int | None = None) -> torch.Tensor:
    """Load several images into one batch [B, 3, S, S]; they must share a size (give `clf` or `size`)."""
    if not srcs:
        raise FeatvisError("no images given")
    batch = [load_image(s, clf, size=size) for s in srcs]
    shapes = {tuple(b.shape[-2:]) for b in batch}
    if len(shapes) > 1:
        raise FeatvisError(f"images have different sizes {sorted(shapes)}; pass a classifier or size= to resize")
    return torch.cat(batch)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid (what a saved PNG holds), staying float in [0, 1]."""
    return images.clamp(0, 1).mul(255).round().div(255)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One image [3, H, W] or [1, 3, H, W] (or a map [H, W]) as a uint8 numpy array H×W×3 (or H×W)."""
    t = image.detach()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise FeatvisError(f"to_uint8 takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return arr.permute(1, 2, 0).numpy() if arr.ndim == 3 else arr.numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """A [3, H, W] / [1, 3, H, W] image in [0, 1] as an 8-bit RGB PIL image (rounded, as `save_image` writes it)."""
    return Image.fromarray(to_uint8(image))


def encode_png(image: torch.Tensor | Image.Image) -> bytes:
    """The PNG file bytes of an image tensor in [0, 1] or a PIL image (what the web app and the reports embed)."""
    im = image if isinstance(image, Image.Image) else to_pil(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def save_image(image: torch.Tensor | Image.Image, path: str | os.PathLike) -> Path:
    """Save as an 8-bit PNG atomically (write a temporary file, then rename)."""
    from featvis._io import atomic_write_bytes

    return atomic_write_bytes(path, encode_png(image))


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image file paths; errors name what is missing."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        kind = path_kind(p)
        if kind == "dir":
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FeatvisError(f"folder '{display_path(p, SHOWN_PATH_CHARS)}' holds no image files "
                                   f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif kind == "file":
            files.append(p)
        else:
            raise FeatvisError(f"input '{display_path(p, SHOWN_PATH_CHARS)}' does not exist")
    if not files:
        raise FeatvisError("no input images given")
    return list(dict.fromkeys(files))
