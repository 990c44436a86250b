"""Small demo data from scikit-image's bundled photographs: ``python -m Utils.demo_data [--out demo_data]``.

Builds, with no download, a training folder (``<out>/train/HR/name.png`` and the MATLAB-bicubic x4 LR
``<out>/train/LR_bicubic/X4/namex4.png``) and a held-out test set in the Datasets2023 layout
(``<out>/Datasets2023/{GT/Demo, GTmod12/Demo_GTmod12, GTmod12_LRx4/Demo_LRbicx4}``), about 6 MB in all.
The images ship inside the scikit-image package. The result is deterministic and building it again
rewrites nothing that is already correct.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Callable, Union

import numpy as np

from Utils.image_io import read_image, write_image

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
SCALE = 4
TEST_NAME = "Demo"


def _rgb(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from a gray or RGB sample image."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"sample image has dtype {img.dtype}, expected uint8")
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3])


def _center_crop(img: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


def _samples() -> tuple[dict[str, Callable[[], np.ndarray]], dict[str, Callable[[], np.ndarray]]]:
    """(training, held-out test) photographs bundled with scikit-image (no download needed)."""
    from skimage import data  # lazy: only the demo needs scikit-image's sample data

    train = {
        "astronaut": data.astronaut,
        "rocket": data.rocket,
        "immunohistochemistry": data.immunohistochemistry,
        "hubble": lambda: _center_crop(data.hubble_deep_field(), 512, 512),
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "brick": data.brick,
        "grass": data.grass,
        "gravel": data.gravel,
    }
    test = {"chelsea": data.chelsea, "coffee": data.coffee, "camera": data.camera}
    return train, test


def _write_if_changed(path: Path, img: np.ndarray) -> bool:
    """Write ``img`` unless the file already holds exactly these pixels; True when written."""
    if path.is_file():
        try:
            if np.array_equal(read_image(path), img):
                return False
        except ValueError:
            pass  # unreadable or wrong: rewrite it
    write_image(path, img)
    return True


def build_demo_data(out: PathLike = "demo_data") -> dict[str, Path]:
    """Build (or check) the demo training folder and test set under ``out``; returns their paths.

    Keys: ``train_hr``, ``train_lr``, ``test_gt``, ``test_hr`` (GTmod12), ``test_lr`` and ``root``.
    """
    from Utils.imresize import imresize, modcrop  # lazy: the one MATLAB resize of the project

    out = Path(out)
    train_hr, train_lr = out / "train" / "HR", out / "train" / "LR_bicubic" / f"X{SCALE}"
    ds_root = out / "Datasets2023"
    gt_dir = ds_root / "GT" / TEST_NAME
    train, test = _samples()
    written = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image's notices about its sample data
        for name, load in train.items():
            hr = _rgb(load())
            written += _write_if_changed(train_hr / f"{name}.png", hr)
            written += _write_if_changed(train_lr / f"{name}x{SCALE}.png", imresize(modcrop(hr, SCALE), 1 / SCALE))
        for name, load in test.items():
            written += _write_if_changed(gt_dir / f"{name}.png", _rgb(load()))
    from Utils.prepare_data import prepare_testset  # lazy: GTmod12 and LR in the Datasets2023 layout

    report = prepare_testset(gt_dir, TEST_NAME, ds_root, scale=SCALE, mod=12)  # GT/Demo is its own source
    bad = report["mismatched_files"] + report["failed_files"]
    if bad:
        raise RuntimeError(f"demo test set under {ds_root} could not be made: {bad[0]} (and {len(bad) - 1} more); "
                           "delete the folder and run again")
    written += report["written"]
    log.info("demo data in %s: %d files written, the rest already up to date", out, written)
    dirs = report["dirs"]
    paths = {"root": out, "train_hr": train_hr, "train_lr": train_lr, "test_gt": Path(dirs["gt"]),
             "test_hr": Path(dirs["gtmod"]), "test_lr": Path(dirs["lr"])}
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.demo_data``."""
    parser = argparse.ArgumentParser(prog="python -m Utils.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: build the demo data and print where it is."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for key, path in build_demo_data(args.out).items():
        print(f"{key:10s} {path}")


if __name__ == "__main__":
    main()
