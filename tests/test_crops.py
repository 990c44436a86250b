"""Crop sheets (Utils/crops.py): regions where texture and regular structure meet, and the sheet itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from Utils import crops


def _scene(seed: int = 0) -> np.ndarray:
    """128x128: flat left half, stripes top right, noise texture bottom right (they meet at the right middle)."""
    rng = np.random.default_rng(seed)
    img = np.full((128, 128), 128.0)
    xx = np.arange(64)
    img[:64, 64:] = 128 + 90 * np.sign(np.sin(xx / 3.0))[None, :]
    img[64:, 64:] = rng.uniform(20, 235, (64, 64))
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def test_regions_are_where_texture_and_structure_meet():
    boxes = crops.choose_boxes({"a": _scene()}, size=48, count=1)
    assert len(boxes) == 1
    b = boxes[0]
    assert b.x >= 48 and b.y < 64 < b.y + 48  # the right half, across the stripes/noise border
    # a flat image has no such region (score 0 everywhere): it is still returned, but scores are 0
    scores, _ = crops.texture_structure_scores(np.full((64, 64), 100.0), 32, 8)
    assert np.all(scores == 0)


def test_boxes_do_not_overlap_and_respect_per_image():
    boxes = crops.choose_boxes({"a": _scene(0), "b": _scene(1)}, size=32, count=4, per_image=2)
    assert len(boxes) == 4 and sum(b.image == "a" for b in boxes) == 2
    for i, p in enumerate(boxes):
        for q in boxes[i + 1:]:
            if p.image == q.image:
                assert abs(p.x - q.x) >= 32 or abs(p.y - q.y) >= 32


def test_parse_model_and_bad_specs():
    assert crops.parse_model("P=RFDN:w/p.pth") == ("P", "RFDN", "w/p.pth")
    assert crops.parse_model("x=w/p.pth") == ("x", "auto", "w/p.pth")
    with pytest.raises(ValueError, match="expected LABEL=PRESET:CHECKPOINT"):
        crops.parse_model("RFDN:w.pth")


def test_sheet_from_the_command_line(tmp_path: Path):
    from Model import build_model
    from Utils.image_io import write_image
    from Utils.imresize import imresize

    hr = _scene()
    (tmp_path / "HR").mkdir()
    write_image(tmp_path / "HR" / "im.png", hr)
    write_image(tmp_path / "LR_bicubic" / "X4" / "imx4.png", imresize(hr, 0.25))
    torch.manual_seed(0)
    torch.save(build_model("RFDN").state_dict(), tmp_path / "a.pth")
    out = tmp_path / "sheet.png"
    rc = crops.main(["--lr_folder", str(tmp_path / "LR_bicubic" / "X4"), "--model", f"a=RFDN:{tmp_path / 'a.pth'}",
                     "--crop", "48", "--count", "1", "--out", str(out)])
    assert rc == 0 and out.stat().st_size > 0
    assert crops.main(["--lr_folder", str(tmp_path / "LR_bicubic" / "X4"), "--model", "bad", "--out",
                       str(tmp_path / "x.png")]) == 2
