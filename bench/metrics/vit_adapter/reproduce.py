"""Check that the port reproduces a checkpoint's published mIoU on COCO-Stuff-164k val.

Segments the *uncompressed, native-size* val2017 images with the released test pipeline and
compares with the COCO-Stuff label maps, as ViT-Adapter's own evaluation did (mmseg
``COCOStuffDataset``: stuffthingmaps ``category id - 1`` renumbered to train ids 0..170 with
:data:`bench.data.prepare.STUFF_LUT`, 255 ignored; intersection and union per class summed over
the 5000 images; mean over classes with a non-empty union). With the released UperNet checkpoint
the result should be the published single-scale 50.5 (to within about 0.3: bench resizes with
torch's bilinear instead of OpenCV's; ``--tolerance`` sets the margin); ``--model`` with the
Mask2Former releases: 51.7 (BEiT-L) and 52.3 (BEiTv2-L).

    python -m bench.metrics.vit_adapter.reproduce --images val2017.zip \\
        --labels stuffthingmaps_trainval2017.zip --device cuda

``--images``/``--labels``: the official archives (``val2017.zip``,
``stuffthingmaps_trainval2017.zip``; members ``val2017/<stem>.jpg|png``) or the folders they unpack
to. ``--limit N`` checks the first N images only (a smoke test: the published number needs all
5000). Weights: the registry's file, ``--weights PATH`` or ``--weights random`` (no meaning).
Exit status 0 when the full set is within the tolerance, 1 when it is not, 2 for a partial run.
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

PUBLISHED_SS = {"upernet-beit-l-cocostuff164k": 50.5, "mask2former-beit-l-cocostuff164k": 51.7,
                "mask2former-beitv2-l-cocostuff164k": 52.3}  # the README table's single-scale mIoU


class _Files:
    """Files named ``<stem><suffix>`` in a folder, or under ``val2017/`` in a zip archive."""

    def __init__(self, path: Path, suffix: str) -> None:
        self.path, self.suffix = Path(path), suffix
        if self.path.is_file() and zipfile.is_zipfile(self.path):
            self.zf = zipfile.ZipFile(self.path)
            self.names = {Path(n).stem: n for n in self.zf.namelist()
                          if n.endswith(suffix) and re.search(r"(^|/)val2017/", n)}
        elif self.path.is_dir():
            self.zf = None
            self.names = {p.stem: p for p in self.path.glob(f"*{suffix}")}
        else:
            raise SystemExit(f"{self.path}: neither a folder nor a zip archive")

    def read(self, stem: str) -> np.ndarray:
        import io

        from PIL import Image

        name = self.names[stem]
        data = self.zf.read(name) if self.zf else Path(name).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB") if self.suffix == ".jpg" else im)


def run(images: Path, labels: Path, device: str = "cpu", limit: int | None = None, model: str | None = None,
        weights: str | None = None) -> dict:
    """Segment and score; returns ``{"miou", "n_images", "n_total", "segmenter", "iou"}`` (mIoU ×100)."""
    from rich.progress import track

    from bench.data.prepare import STUFF_LUT
    from bench.metrics.miou import IoUAccumulator
    from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

    imgs, labs = _Files(images, ".jpg"), _Files(labels, ".png")
    stems = sorted(set(imgs.names) & set(labs.names))
    if not stems:
        raise SystemExit(f"no image of {images} has a label map in {labels}")
    todo = stems[:limit] if limit else stems
    seg = ViTAdapterSegmenter(model, weights, device=device)
    acc = IoUAccumulator(256, 255)
    for stem in track(todo, description=f"segmenting {len(todo)} COCO-Stuff val images"):
        rgb, raw = imgs.read(stem), labs.read(stem)
        if raw.shape != rgb.shape[:2]:
            raise SystemExit(f"{stem}: label map {raw.shape} and image {rgb.shape[:2]} differ in size")
        acc.update(seg.predict_trainid(rgb), STUFF_LUT[raw])
    res = acc.compute()
    return {"miou": 100 * res["miou"], "n_images": len(todo), "n_total": len(stems), "segmenter": seg.describe(),
            "iou": res["iou"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, type=Path, help="val2017.zip or its val2017/ folder")
    ap.add_argument("--labels", required=True, type=Path, help="stuffthingmaps_trainval2017.zip or its val2017/ folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default=None, help="ViT-Adapter variant (default: $BENCH_VIT_ADAPTER_MODEL or UperNet)")
    ap.add_argument("--weights", default=None, help="registry (default) | PATH | random")
    ap.add_argument("--tolerance", type=float, default=0.3)
    args = ap.parse_args(argv)
    out = run(args.images, args.labels, args.device, args.limit, args.model, args.weights)
    name = out["segmenter"]["model"]
    published = PUBLISHED_SS.get(name)
    print(f"{name} ({out['segmenter']['weights']}): mIoU {out['miou']:.2f} on {out['n_images']} of "
          f"{out['n_total']} COCO-Stuff-164k val images; published single-scale: "
          f"{published if published is not None else 'n/a'}")
    if out["n_images"] < 5000 or published is None:
        print("partial check (the published number is over all 5000 val images)" if out["n_images"] < 5000
              else "no published number for this variant")
        return 2
    ok = abs(out["miou"] - published) <= args.tolerance
    print(f"{'REPRODUCED' if ok else 'NOT reproduced'}: |{out['miou']:.2f} - {published}| "
          f"{'<=' if ok else '>'} {args.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
