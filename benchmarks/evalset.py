"""The evaluation set the benchmarks use besides the bundled photos: 16 real photos, assembled from files that ship
inside two PyPI wheels (the only network this machine has), so anyone can rebuild it exactly.

    python benchmarks/evalset.py [-o out/evalset]

- the 6 bundled photos (featvis/samples, see its NOTICE);
- scikit-learn 1.9.1's china.jpg and flower.jpg (CC BY 2.0, Flickr users danielbuechele and vultilion, as its
  sklearn/datasets/images/README.txt says);
- scikit-image 0.26.0's brick, clock_motion, coins, grass, gravel, hubble_deep_field, motorcycle_left and retina
  (public domain or CC0 as skimage/data/README.txt lists them).

Most are not ImageNet photos of one object (textures, a coin tray, deep space): the leaderboard is computed for the
class the model predicts on each, which is what `featvis evaluate` does without labels. Writes NOTICE beside them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import featvis as fv

WHEELS = {
    "scikit-learn==1.9.1": {f"sklearn/datasets/images/{n}.jpg": f"sklearn-{n}.jpg" for n in ("china", "flower")},
    "scikit-image==0.26.0": {
        f"skimage/data/{n}": f"skimage-{n}"
        for n in ("brick.png", "clock_motion.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
                  "motorcycle_left.png", "retina.jpg")},
}
NOTICE = """Evaluation set assembled by benchmarks/evalset.py (not redistributed with featvis).
- astronaut, camera, chelsea, coffee, grace_hopper, rocket: featvis's bundled photos; see src/featvis/samples/NOTICE.
- sklearn-china.jpg, sklearn-flower.jpg: from the scikit-learn 1.9.1 wheel, CC BY 2.0 (Flickr: danielbuechele,
  vultilion), per sklearn/datasets/images/README.txt.
- skimage-*.png/jpg: from the scikit-image 0.26.0 wheel, public domain / CC0 per skimage/data/README.txt.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("out/evalset"))
    ap.add_argument("--cache", type=Path, default=Path("out/.wheels"), help="where the two wheels are downloaded")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    for name in fv.samples.names():
        shutil.copyfile(fv.samples.path(name), args.out / fv.samples.path(name).name)
    for req, files in WHEELS.items():
        dist = req.split("==")[0].replace("-", "_")
        found = sorted(args.cache.glob(f"{dist}-{req.split('==')[1]}-*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(args.cache), req], check=True)
            found = sorted(args.cache.glob(f"{dist}-{req.split('==')[1]}-*.whl"))
        with zipfile.ZipFile(found[0]) as z:
            for inner, outer in files.items():
                (args.out / outer).write_bytes(z.read(inner))
    (args.out / "NOTICE").write_text(NOTICE)
    print(f"{len(list(args.out.glob('*.*')))} images in {args.out}")


if __name__ == "__main__":
    main()
