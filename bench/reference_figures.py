"""Reproduce the reference table of ../shared/data/README.md with main_for_infer.py.

    python bench/reference_figures.py [--sets Set5 Set14] [--out bench/results/reference]

Lays the official Set5/Set14 files out as Datasets2023, evaluates every published checkpoint with
the seed's command line, and prints a markdown table of ours against the reference (delta in dB).
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
    with open(result / "summary.csv", newline="") as f:
        got = {(r["model"], r["checkpoint"], r["dataset"]): r for r in csv.DictReader(f)}
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
    return 0 if worst <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
