"""Image reading and writing with strict, one-line errors.

All arrays are uint8 HWC RGB. Conversions between uint8 images and float tensors follow the field
standard: ``tensor = img / 255``; ``img = round(clamp(tensor, 0, 1) * 255)``.
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def is_image_file(path: PathLike) -> bool:
    """True when the file name has one of the supported image extensions."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: PathLike) -> list[Path]:
    """Sorted image files directly in ``folder``; errors if it is missing or holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(folder, "folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))
    if not files:
        raise ImageError(folder, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder")
    return files


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG header (PIL silently reduces 16-bit RGB PNGs to 8 bits)."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack("B", head[24:25])[0]
    return None


def read_image(path: PathLike, gray_to_rgb: bool = True) -> np.ndarray:
    """Read an 8-bit image as a uint8 HxWx3 RGB array.

    Grayscale images (like Set14 ``bridge.png``) are replicated to three channels, as the
    standard evaluation does; an RGBA image whose alpha is fully opaque loses its alpha.
    16-bit images, transparent RGBA images and unreadable files raise :class:`ImageError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    if _png_bit_depth(path) == 16:
        raise ImageError(path, "16-bit image; only 8-bit images are supported (convert it to 8-bit first)")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ImageError(path, f"{'16-bit' if mode.startswith('I;16') else mode + '-mode'} image; "
                                       "only 8-bit images are supported")
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            arr = np.asarray(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    if arr.dtype != np.uint8:
        raise ImageError(path, f"unsupported pixel type {arr.dtype}; only 8-bit images are supported")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        if not gray_to_rgb:
            return arr.reshape(arr.shape[0], arr.shape[1])
        return np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    if arr.shape[2] == 2:  # LA
        arr = arr[:, :, :1]
        return np.repeat(arr, 3, axis=2) if gray_to_rgb else arr[:, :, 0]
    if arr.shape[2] == 4:
        if arr[:, :, 3].min() < 255:
            raise ImageError(path, "RGBA image with transparency; save it as RGB first")
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def write_image(path: PathLike, img: np.ndarray, compress_level: Optional[int] = None) -> None:
    """Write a uint8 HWC RGB (or HW gray) array atomically (temporary file, then rename).

    ``compress_level`` (0-9, PNG only) trades file size for time: PIL's default is 6; 1 writes about
    twice as fast for files about 10-20% larger (evaluation uses it for its SR images). Pixels are
    the same either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.dtype != np.uint8:
        raise TypeError(f"write_image expects uint8, got {img.dtype}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png", dir=path.parent)
    os.close(fd)
    try:
        kw = {"compress_level": int(compress_level)} if compress_level is not None and \
            (path.suffix or ".png").lower() == ".png" else {}
        Image.fromarray(img).save(tmp, **kw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def img2tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB array to a float32 1x3xHxW tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
    return t.unsqueeze(0)


def tensor2img(t: torch.Tensor) -> np.ndarray:
    """Float tensor (1x3xHxW or 3xHxW) in [0, 1] to a uint8 HWC array: clamp, x255, round."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor2img expects one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.detach().float().clamp(0, 1).mul_(255.0).round_().to(torch.uint8).cpu().numpy()  # clamp copies
    return np.ascontiguousarray(arr.transpose(1, 2, 0))
