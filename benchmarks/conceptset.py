"""A labelled ImageFolder of 27 real photos in 3 ImageNet classes, assembled from files that ship inside one Debian
package (Debian's archive is a registry this machine reaches), so anyone can rebuild it exactly.

    python benchmarks/conceptset.py [-o out/conceptset] [--deb gcompris-qt-data_3.1-2_all.deb]

Every photo comes from Debian bookworm's gcompris-qt-data 3.1-2 (pool/main/g/gcompris-qt/gcompris-qt-data_3.1-2_all.deb,
SHA-256 checked below), whose activities keep their pictures inside Qt resource files under
/usr/share/gcompris-qt/rcc/; each of those folders has a README giving every picture's author, Wikimedia Commons (or
publicdomainpictures.net) source and licence, which NOTICE repeats per image:

- castle (10): details.rcc's Chenonceau, EgeskovSlotSpejling, EilanDonanCastle, Nagoya and Neuschwanstein
  `_background.webp` (GCompris's CC BY-SA 4.0 / CC BY 4.0 edits of CC BY-SA 3.0 / CC BY 3.0 photos) and
  explore_monuments.rcc's chateaudeChambord, chateaudeChenonceau, citedeCarcassonne, neuschwansteinCastle and
  schwerinPalace (Schwerin Castle) (public domain or CC0-1.0);
- hammer (9): categorization.rcc's tools/hammer1-9.webp (public domain or CC0-1.0);
- solar dish (8): categorization.rcc's renewable/solar1-8.webp: solar cookers and ovens, a solar tracker, photovoltaic
  panels and collectors, ImageNet's "solar dish, solar collector, solar furnace" (public domain or CC0-1.0).

The folders are named as featvis's labels name the classes (`featvis classify OUT --imagefolder`). Each picture is
scaled to at most 512 px on its long side and written as JPEG (quality 90). Writes NOTICE beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import subprocess
import tarfile
import time
import zlib
from pathlib import Path

from PIL import Image

import featvis as fv

PACKAGE, VERSION = "gcompris-qt-data", "3.1-2"
SHA256 = "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f"
RCC = "usr/share/gcompris-qt/rcc/"
ACT = "gcompris/src/activities/"
DETAILS = f"{ACT}details/resource/image/"
MONUMENTS = f"{ACT}explore_monuments/resource/"
CATEG = f"{ACT}categorization/resource/images/"
# class -> [(rcc file, path inside it, README inside it)]
CLASSES = {
    "castle": [("details.rcc", f"{DETAILS}{n}_background.webp", f"{DETAILS}README")
               for n in ("Chenonceau", "EgeskovSlotSpejling", "EilanDonanCastle", "Nagoya", "Neuschwanstein")]
    + [("explore_monuments.rcc", f"{MONUMENTS}{n}.webp", f"{MONUMENTS}README")
       for n in ("france/chateaudeChambord", "france/chateaudeChenonceau", "france/citedeCarcassonne",
                 "germany/neuschwansteinCastle", "germany/schwerinPalace")],
    "hammer": [("categorization.rcc", f"{CATEG}tools/hammer{i}.webp", f"{CATEG}tools/README") for i in range(1, 10)],
    "solar dish": [("categorization.rcc", f"{CATEG}renewable/solar{i}.webp", f"{CATEG}renewable/README")
                   for i in range(1, 9)],
}
LONG_SIDE = 512


def deb_members(deb: bytes, wanted: set[str]) -> dict[str, bytes]:
    """The files named in `wanted` (paths without the leading ./) from a .deb's data.tar.*: a .deb is an ar archive."""
    assert deb[:8] == b"!<arch>\n", "not a .deb"
    pos = 8
    while pos < len(deb):
        name, size = deb[pos:pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48:pos + 58])
        body = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar
                        if m.isfile() and m.name.removeprefix("./") in wanted}
    raise ValueError("no data.tar in the .deb")


def rcc_files(blob: bytes) -> dict[str, bytes]:
    """Every file in a Qt resource (.rcc) file by its path: the tree of nodes, the names table, then the data."""
    magic, version, tree, data, names = struct.unpack(">4sIIII", blob[:20])
    assert magic == b"qres", "not a Qt resource file"
    node = 22 if version >= 2 else 14  # version 2 adds a last-modified time to every node

    def name(off: int) -> str:
        n = struct.unpack(">H", blob[names + off:names + off + 2])[0]
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    todo = [(0, "")]
    while todo:
        i, prefix = todo.pop()
        at = tree + i * node
        name_off, flags = struct.unpack(">IH", blob[at:at + 6])
        path = prefix + name(name_off) if i else ""
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", blob[at + 6:at + 14])
            todo += [(c, f"{path}/" if path else "") for c in range(first, first + count)]
            continue
        off = data + struct.unpack(">I", blob[at + 10:at + 14])[0]
        raw = blob[off + 4:off + 4 + struct.unpack(">I", blob[off:off + 4])[0]]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        out[path] = zlib.decompress(raw[4:]) if flags & 1 else raw
    return out


def credits(readme: str, file: str) -> str:
    """The README block (blank-line separated) that lists `file`, as one line: author, licence, source, comment."""
    for block in readme.split("\n\n"):
        lines = [x.strip() for x in block.strip().splitlines()]
        if file in lines:
            keep = [x for x in lines if x.split(":")[0] in ("Copyright", "License", "Source", "Comment")]
            return "; ".join(keep)
    raise KeyError(f"{file} is not in its README")


def fetch_deb(cache: Path, deb: Path | None) -> bytes:
    if deb is None:
        cache.mkdir(parents=True, exist_ok=True)
        deb = cache / f"{PACKAGE}_{VERSION}_all.deb"
        if not deb.exists():
            subprocess.run(["apt-get", "download", "-q", f"{PACKAGE}={VERSION}"], cwd=cache, check=True)
    blob = deb.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{deb}: SHA-256 {digest}, not {PACKAGE} {VERSION}'s {SHA256}")
    return blob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("out/conceptset"))
    ap.add_argument("--cache", type=Path, default=Path("out/.debs"), help="where the .deb is downloaded")
    ap.add_argument("--deb", type=Path, help=f"a {PACKAGE} {VERSION} .deb already here (skips apt-get download)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    labels = fv.load_model().labels
    for cls in CLASSES:  # the folder names must be the model's own class names
        assert labels[labels.lookup(cls)] == cls, cls
    rccs = deb_members(fetch_deb(args.cache, args.deb), {RCC + r for files in CLASSES.values() for r, _, _ in files})
    parsed = {name.removeprefix(RCC): rcc_files(blob) for name, blob in rccs.items()}
    notice = [f"Labelled photos assembled by benchmarks/conceptset.py (not redistributed with featvis) from Debian's "
              f"{PACKAGE} {VERSION} (GCompris 3.1; sha256 {SHA256}).",
              f"Each line: the image, the file inside /{RCC} it was scaled down from, and the credits that file's "
              "README gives (CC BY-SA images stay under CC BY-SA).", ""]
    for cls, files in CLASSES.items():
        folder = args.out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for rcc, inner, readme in files:
            im = Image.open(io.BytesIO(parsed[rcc][inner])).convert("RGB")
            im.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
            stem = inner.rsplit("/", 1)[1].removesuffix(".webp").removesuffix("_background")
            name = f"{rcc.removesuffix('.rcc')}-{stem}.jpg"
            im.save(folder / name, quality=90)
            who = credits(parsed[rcc][readme].decode(), inner.removeprefix(readme.removesuffix("README")))
            notice.append(f"{cls}/{name}: {rcc}:{inner}. {who}")
    (args.out / "NOTICE").write_text("\n".join(notice) + "\n")
    counts = ", ".join(f"{cls} {len(files)}" for cls, files in CLASSES.items())
    print(f"{sum(map(len, CLASSES.values()))} images ({counts}) in {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
