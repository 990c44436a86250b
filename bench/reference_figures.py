"""Reproduce the reference table of ../shared/data/README.md, and the IMDN paper's x2/x3 figures, with
main_for_infer.py.

    python bench/reference_figures.py [--sets Set5 Set14] [--out bench/results/reference]

x4: lays the official Set5/Set14 files out as Datasets2023, evaluates every published checkpoint with
the seed's command line, and prints a markdown table of ours against the reference (delta in dB).
x2/x3: prepares the sets from their HR images with ``Utils.prepare_data --mod <scale>`` (MATLAB bicubic),
evaluates ``IMDN_x2.pth`` / ``IMDN_x3.pth`` with ``--scale`` and prints them against the paper's figures.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import main_for_infer  # noqa: E402
from Utils.evaluate import link_benchmark_as_datasets2023  # noqa: E402
from Utils.prepare_data import prepare_testset  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
# (preset, checkpoint) -> {set: (psnr, ssim)} from ../shared/data/README.md
REFERENCE = {
    ("RFDN", "SRDTKD/DTKD-RFDN.pth"): {"Set5": (31.3418, 0.8773), "Set14": (28.0135, 0.7618)},
    ("RFDN", "SRDTKD/DTKD-RFDN-perceptual.pth"): {"Set5": (31.3367, 0.8766), "Set14": (28.0419, 0.7625)},
    ("LBNet", "SRDTKD/DTKD-LBNet.pth"): {"Set5": (32.0963, 0.8919), "Set14": (28.6071, 0.7799)},
    ("LBNet", "SRDTKD/DTKD-LBNet-perceptual.pth"): {"Set5": (31.7072, 0.8856), "Set14": (28.2507, 0.7719)},
    ("RFDN", "MTKDSR/RFDN_x4.pth"): {"Set5": (32.0887, 0.8933), "Set14": (28.5185, 0.7793)},
    ("IMDN", "IMDN/IMDN_x4.pth"): {"Set5": (32.2096, 0.8948), "Set14": (28.5820, 0.7811)},
    ("RFDN_AIM", "RFDN/RFDN_AIM.pth"): {"Set5": (32.1589, 0.8946), "Set14": (28.6451, 0.7825)},
    ("LBNet_tiny", "LBNet/LBNet-T_X4.pt"): {"Set5": (32.0755, 0.8933), "Set14": (28.5364, 0.7802)},
    ("PAN", "PAN/PANx4_DF2K.pth"): {"Set5": (32.1311, 0.8948), "Set14": (28.6107, 0.7822)},
}
# (preset, checkpoint, scale) -> {set: (psnr, ssim)} as published (IMDN paper, Y, border = scale)
PUBLISHED = {
    ("IMDN", "IMDN/IMDN_x2.pth", 2): {"Set5": (38.00, 0.9605), "Set14": (33.63, 0.9177)},
    ("IMDN", "IMDN/IMDN_x3.pth", 3): {"Set5": (34.36, 0.9270), "Set14": (30.32, 0.8417)},
}


def _summary(path: Path) -> dict:
    with open(path, newline="") as f:
        return {(r["model"], r["checkpoint"], r["dataset"]): r for r in csv.DictReader(f)}


def published_table(shared: Path, out: Path, sets: list[str]) -> bool:
    """x2/x3 from the HR images (mod = scale); prints the table; True when every figure rounds to the paper's."""
    result = out / "Result_x23"
    for (model, rel, scale) in PUBLISHED:
        for s in sets:
            prepare_testset(shared / "benchmark" / s / "HR", s, out / "Datasets2023", scale, mod=scale)
        main_for_infer.main(["--model_name", model, "--checkpoint", str(shared / "weights" / rel), "--scale", str(scale),
                             "--test_datasets", *sets, "--datasets_root", str(out / "Datasets2023"), "--mod", str(scale),
                             "--output_folder", str(result), "--no_niqe", "--no_save", "--quiet"])
    got = _summary(result / "summary.csv")
    print("\n| checkpoint | scale | " + " | ".join(f"{s} PSNR / SSIM (paper)" for s in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    same = True
    for (model, rel, scale), ref in PUBLISHED.items():
        cells = []
        for s in sets:
            r = got[(model, Path(rel).name, s)]
            psnr, ssim = float(r["psnr"]), float(r["ssim"])
            same &= round(psnr, 2) == ref[s][0] and round(ssim, 4) == ref[s][1]
            cells.append(f"{psnr:.4f} / {ssim:.4f} ({ref[s][0]:.2f} / {ref[s][1]:.4f})")
        print(f"| {rel} | x{scale} | " + " | ".join(cells) + " |")
    return same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["Set5", "Set14"])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reference")
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args()
    data = link_benchmark_as_datasets2023(args.shared / "benchmark", args.out / "Datasets2023", args.sets)
    result = args.out / "Result"
    for (model, rel) in REFERENCE:
        main_for_infer.main(["--Train", "False", "--model_name", model, "--checkpoint", str(args.shared / "weights" / rel),
                             "--test_datasets", *args.sets, "--datasets_root", str(data), "--output_folder", str(result),
                             "--no_niqe", "--no_save", "--quiet"])
    got = _summary(result / "summary.csv")
    print("| checkpoint | preset | " + " | ".join(f"{s} PSNR / SSIM (ref) | Δ dB" for s in args.sets) + " |")
    print("|---|---|" + "---|---|" * len(args.sets))
    worst = 0.0
    for (model, rel), ref in REFERENCE.items():
        cells = []
        for s in args.sets:
            r = got[(model, Path(rel).name, s)]
            d = float(r["psnr"]) - ref[s][0]
            worst = max(worst, abs(d), abs(float(r["ssim"]) - ref[s][1]) * 20)
            cells.append(f"{float(r['psnr']):.4f} / {float(r['ssim']):.4f} ({ref[s][0]:.4f} / {ref[s][1]:.4f}) | {d:+.4f}")
        print(f"| {rel} | {model} | " + " | ".join(cells) + " |")
    same = published_table(args.shared, args.out, args.sets)
    return 0 if worst <= 0.01 and same else 1


if __name__ == "__main__":
    sys.exit(main())
