"""Make MACO's fixed Fourier magnitude (src/featvis/optvis/maco_spectrum.pt) from public-domain / CC0 photos.

MACO (Fel et al., NeurIPS 2023) optimizes only the phase of an image's spectrum; the magnitude is the average
magnitude of natural images. horama downloads an ImageNet-derived template at run time; featvis ships its own,
made offline by this script from five photos whose licences allow it:

    astronaut.png  NASA, public domain                       scikit-image 0.26.0 wheel, skimage/data/
    chelsea.png    CC0, Stefan van der Walt                  scikit-image 0.26.0 wheel, skimage/data/
    coffee.png     CC0, Rachel Michetti                      scikit-image 0.26.0 wheel, skimage/data/
    rocket.jpg     SpaceX, public domain                     scikit-image 0.26.0 wheel, skimage/data/
    grace_hopper.jpg  US Navy photograph, public domain      matplotlib, mpl-data/sample_data/

(the same photos featvis bundles in samples/, here at their original resolution; the grayscale `camera` is left
out because it has no colour).

Recipe: each photo at several scales (short side 256, 320, 400 px and its own) gives 48 random 256 × 256 crops
(seeded); each crop in [0, 1] is mapped to the space MACO's image is made in — logit (pixels clamped to
[1/255, 254/255]), then the inverse of featvis's colour-correlation matrix — and its per-channel rfft2 magnitude
(orthonormal) is averaged over all crops. The result, [3, 256, 129] float16, is what `MacoImage` resamples to any
size (`maco_magnitude`).

    pip download --no-deps scikit-image==0.26.0 -d /tmp/skimg
    python scripts/maco_spectrum.py /tmp/skimg/scikit_image-0.26.0-*.whl
"""

from __future__ import annotations

import argparse
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featvis.optvis.param import _color_matrix

SIZE = 256
CROPS_PER_SCALE = 12
SHORT_SIDES = (256, 320, 400, None)  # None: the photo's own size
SEED = 0
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
OUT = Path(__file__).resolve().parent.parent / "src" / "featvis" / "optvis" / "maco_spectrum.pt"


def photos(wheel: str) -> dict[str, Image.Image]:
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name in SKIMAGE_PHOTOS:
            out[name] = Image.open(io.BytesIO(z.read(f"skimage/data/{name}"))).convert("RGB")
    import matplotlib

    out["grace_hopper.jpg"] = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data",
                                                      "grace_hopper.jpg")).convert("RGB")
    return out


def crops(im: Image.Image, gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for short in SHORT_SIDES:
        scaled = im
        if short is not None:
            s = short / min(im.size)
            scaled = im.resize((max(SIZE, round(im.width * s)), max(SIZE, round(im.height * s))), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(scaled, dtype=np.float32) / 255).permute(2, 0, 1)
        h, w = x.shape[-2:]
        for _ in range(CROPS_PER_SCALE):
            top = int(torch.randint(h - SIZE + 1, (1,), generator=gen))
            left = int(torch.randint(w - SIZE + 1, (1,), generator=gen))
            out.append(x[:, top:top + SIZE, left:left + SIZE])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", help="the scikit-image 0.26.0 wheel (pip download --no-deps scikit-image==0.26.0)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(SEED)
    inverse = torch.linalg.inv(_color_matrix(dtype=torch.float64)).float()
    total, count = torch.zeros(3, SIZE, SIZE // 2 + 1, dtype=torch.float64), 0
    sources = photos(args.wheel)
    for im in sources.values():
        for x in crops(im, gen):
            z = torch.logit(x.clamp(1 / 255, 254 / 255))
            d = torch.einsum("chw,dc->dhw", z, inverse)  # undo to_valid's colour re-correlation
            total += torch.fft.rfft2(d, norm="ortho").abs().double()
            count += 1
    magnitude = (total / count).half()
    provenance = ("mean |rfft2| (ortho) of logit, colour-decorrelated 256 px crops: "
                  f"{count} crops of {', '.join(sources)} (scikit-image 0.26.0 data, matplotlib sample_data; public "
                  "domain / CC0); made by scripts/maco_spectrum.py")
    torch.save({"magnitude": magnitude, "size": SIZE, "provenance": provenance}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {provenance}")


if __name__ == "__main__":
    main()
