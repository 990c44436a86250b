"""Crop sheets: the same regions of several models' outputs side by side, so that artifacts are seen.

NIQE rewards noise and checkerboards; a perceptual claim needs a look. This draws one row per region
and one column per model (in the order given) plus the ground truth, at the pixels' own size
(nearest-neighbour, no smoothing), with each crop's PSNR (Y, as the evaluation) in its title::

    python -m Utils.crops --lr_folder ../shared/data/benchmark/Set14/LR_bicubic/X4 \\
        --model start=RFDN:../shared/data/weights/MTKDSR/RFDN_x4.pth \\
        --model P=RFDN:../shared/data/weights/SRDTKD/DTKD-RFDN-perceptual.pth \\
        --out crops.png

Regions are chosen on the ground truth, where texture and regular structure meet (unless ``--box``
gives them): per pixel, the gradient energy and the coherence of the local structure tensor (near 1
on straight edges and stripes, near 0 on isotropic texture); a window's score is the smaller of its
shares of textured pixels (strong gradient, low coherence) and of structured ones (strong gradient,
high coherence). The best windows, at most ``--per_image`` an image and not overlapping, are drawn.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

log = logging.getLogger("crops")


@dataclass(frozen=True)
class Box:
    """A region of an HR image: top-left corner and size, in HR pixels."""

    image: str
    y: int
    x: int
    size: int


def texture_structure_scores(gray: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Score of each ``size`` x ``size`` window (top-left corners every ``stride`` pixels) of a gray image
    in [0, 255]: min(share of textured pixels, share of structured pixels) (see the module docstring)."""
    g = gray.astype(np.float64)
    gx, gy = ndimage.sobel(g, axis=1), ndimage.sobel(g, axis=0)
    sig = 2.0
    jxx, jyy, jxy = (ndimage.gaussian_filter(a, sig) for a in (gx * gx, gy * gy, gx * gy))
    disc = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2)
    coherence = disc / (jxx + jyy + 1e-9)
    energy = np.sqrt(jxx + jyy)
    strong = energy > np.percentile(energy, 60)
    textured = (strong & (coherence < 0.35)).astype(np.float64)
    structured = (strong & (coherence > 0.7)).astype(np.float64)
    h, w = g.shape
    corners = [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]
    ti, si = textured.cumsum(0).cumsum(1), structured.cumsum(0).cumsum(1)

    def share(integral: np.ndarray, y: int, x: int) -> float:
        pad = np.pad(integral, ((1, 0), (1, 0)))
        return (pad[y + size, x + size] - pad[y, x + size] - pad[y + size, x] + pad[y, x]) / size ** 2

    scores = np.array([min(share(ti, y, x), share(si, y, x)) for y, x in corners])
    return scores, corners


def choose_boxes(gts: dict[str, np.ndarray], size: int, count: int, per_image: int = 1) -> list[Box]:
    """The ``count`` best non-overlapping windows over all images, at most ``per_image`` from one image."""
    candidates = []
    for name, gt in gts.items():
        if min(gt.shape[:2]) < size:
            continue
        gray = gt[..., :3] @ np.array([0.299, 0.587, 0.114])
        scores, corners = texture_structure_scores(gray, size, max(size // 4, 1))
        candidates += [(float(s), name, y, x) for s, (y, x) in zip(scores, corners)]
    candidates.sort(key=lambda c: -c[0])
    chosen: list[Box] = []
    for score, name, y, x in candidates:
        mine = [b for b in chosen if b.image == name]
        if len(mine) >= per_image or any(abs(b.y - y) < size and abs(b.x - x) < size for b in mine):
            continue
        chosen.append(Box(name, y, x, size))
        if len(chosen) == count:
            break
    return chosen


def parse_model(spec: str) -> tuple[str, str, str]:
    """``label=PRESET:CHECKPOINT`` (or ``label=CHECKPOINT``, the preset detected) -> (label, preset, path)."""
    if "=" not in spec:
        raise ValueError(f"--model {spec!r}: expected LABEL=PRESET:CHECKPOINT or LABEL=CHECKPOINT")
    label, rest = spec.split("=", 1)
    preset, _, path = rest.partition(":") if ":" in rest else ("auto", "", rest)
    if not label or not path:
        raise ValueError(f"--model {spec!r}: expected LABEL=PRESET:CHECKPOINT or LABEL=CHECKPOINT")
    return label, preset or "auto", path


def super_resolve_images(preset: str, checkpoint: str, lrs: dict[str, np.ndarray], scale: int) -> dict[str, np.ndarray]:
    """Each LR image through one model on the CPU (the project's loader and inference), as uint8 HWC."""
    import torch

    from Model import get_model
    from Utils.image_io import img2tensor, tensor2img
    from Utils.inference import super_resolve

    model = get_model(preset, scale, checkpoint).cpu().eval()
    out = {}
    with torch.inference_mode():
        for name, lr in lrs.items():
            out[name] = tensor2img(super_resolve(model, img2tensor(lr), scale))
    return out


def crop_psnr(sr: np.ndarray, gt: np.ndarray) -> float:
    """PSNR on Y (the evaluation's convention, no border crop: the crop is inside the image)."""
    from Utils.metrics import calculate_psnr

    return float(calculate_psnr(sr, gt, crop_border=0, test_y_channel=True))


def draw_sheet(columns: dict[str, dict[str, np.ndarray]], gts: dict[str, np.ndarray], boxes: Sequence[Box],
               out: Path, title: str = "") -> Path:
    """One row per box, one column per model and the ground truth (``HR``), PSNR in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from Utils.compare import save_atomic

    labels = [*columns, "HR"]
    cell = 2.2
    fig, axes = plt.subplots(len(boxes), len(labels), figsize=(cell * len(labels), cell * len(boxes) + 0.4),
                             squeeze=False)
    for row, box in zip(axes, boxes):
        gt = gts[box.image][box.y:box.y + box.size, box.x:box.x + box.size]
        for ax, label in zip(row, labels):
            img = gt if label == "HR" else columns[label][box.image][box.y:box.y + box.size, box.x:box.x + box.size]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label if label == "HR" else f"{label} {crop_psnr(img, gt):.2f} dB", fontsize=8)
        row[0].set_ylabel(f"{box.image} ({box.x},{box.y})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_atomic(lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"), out)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.crops``."""
    p = argparse.ArgumentParser(prog="python -m Utils.crops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr_folder", required=True, action="append", help="LR test folder (repeatable)")
    p.add_argument("--gt_folder", action="append", default=None,
                   help="its ground truth (default: found beside it, as the evaluation does)")
    p.add_argument("--model", required=True, action="append", help="LABEL=PRESET:CHECKPOINT (repeatable, in order)")
    p.add_argument("--images", nargs="+", default=None, help="only these images (names without extension)")
    p.add_argument("--box", action="append", default=[], help="IMAGE:X,Y instead of the automatic choice")
    p.add_argument("--crop", type=int, default=96, help="crop size in HR pixels")
    p.add_argument("--count", type=int, default=4, help="regions chosen automatically")
    p.add_argument("--per_image", type=int, default=1, help="at most this many regions from one image")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="the PNG to write")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from Utils.evaluate import find_gt_folder, pair_images
    from Utils.image_io import read_image

    try:
        models = [parse_model(m) for m in args.model]
        if args.gt_folder and len(args.gt_folder) != len(args.lr_folder):
            raise ValueError("--gt_folder: give one per --lr_folder")
        lrs, gts = {}, {}
        for i, folder in enumerate(args.lr_folder):
            gt_folder = args.gt_folder[i] if args.gt_folder else find_gt_folder(folder)
            if gt_folder is None:
                raise ValueError(f"{folder}: no ground truth beside it; give --gt_folder")
            for pair in pair_images(folder, gt_folder, args.scale):
                if args.images and pair.name not in args.images:
                    continue
                lrs[pair.name], gts[pair.name] = read_image(pair.lr), read_image(pair.gt)
        if not lrs:
            raise ValueError(f"no image of {', '.join(args.images or [])} in {', '.join(args.lr_folder)}")
        columns = {}
        for label, preset, ckpt in models:
            log.info("%s: %s %s", label, preset, ckpt)
            columns[label] = super_resolve_images(preset, ckpt, lrs, args.scale)
        for name, sr in next(iter(columns.values())).items():
            gts[name] = gts[name][:sr.shape[0], :sr.shape[1]]
        if args.box:
            boxes = []
            for spec in args.box:
                name, _, xy = spec.partition(":")
                x, y = (int(v) for v in xy.split(","))
                if name not in gts:
                    raise ValueError(f"--box {spec}: no image {name!r}")
                boxes.append(Box(name, y, x, args.crop))
        else:
            boxes = choose_boxes(gts, args.crop, args.count, args.per_image)
        if not boxes:
            raise ValueError(f"no region of {args.crop} pixels found")
        out = draw_sheet(columns, gts, boxes, Path(args.out), args.title)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %s (%d regions: %s)", out, len(boxes), ", ".join(f"{b.image}@{b.x},{b.y}" for b in boxes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
