"""LPIPS perceptual distance (Zhang et al. 2018), AlexNet trunk, linear heads v0.1.

Self-contained: the AlexNet ``features`` stack is defined here with torchvision's layer indices,
so torchvision's published ImageNet file loads into it directly (only its ``features.*`` keys are
used). Weights come from explicit local files or, by default, from their published URLs through
``torch.hub`` (cached in ``torch.hub.get_dir()/checkpoints``, so a copy placed there works offline):

* backbone: torchvision's ``alexnet-owt-7be5be79.pth`` (hash-checked by its file name);
* heads: the lpips package's ``weights/v0.1/alex.pth`` (keys ``lin0.model.1.weight`` ...).

The distance of two images in [0, 1]: map to [-1, 1], apply the LPIPS scaling layer, take the
outputs of the five ReLU stages of AlexNet, normalise each feature vector to unit length over
channels, square the differences, weight channels with the 1x1 linear heads, average spatially
and sum over the five stages. The model is frozen and stays in eval mode.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from Utils.image_ops import check_pair, shave

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_HEADS_URLS = {
    "alex": "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",
}
# Cache file name for the heads in the hub checkpoints folder ("alex.pth" alone is ambiguous).
_HEADS_FILE_NAMES = {"alex": "lpips_v0.1_alex.pth"}

# Channels of the five AlexNet stages that LPIPS compares.
ALEX_CHANNELS = (64, 192, 384, 256, 256)
# Indices (in torchvision's ``features``) of the ReLUs that end each stage.
_ALEX_STAGE_ENDS = (1, 4, 7, 9, 11)
# LPIPS input scaling for inputs in [-1, 1] (ImageNet statistics expressed in that range).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10
# Smallest image side that survives AlexNet's stride-4 conv and two 3x3/2 max-pools.
MIN_SIDE = 31


class AlexNetFeatures(nn.Module):
    """AlexNet convolutional trunk up to its fifth ReLU, indexed as torchvision's ``features``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),    # 0
            nn.ReLU(inplace=True),                                    # 1  -> stage 1
            nn.MaxPool2d(kernel_size=3, stride=2),                    # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2),             # 3
            nn.ReLU(inplace=True),                                    # 4  -> stage 2
            nn.MaxPool2d(kernel_size=3, stride=2),                    # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),            # 6
            nn.ReLU(inplace=True),                                    # 7  -> stage 3
            nn.Conv2d(384, 256, kernel_size=3, padding=1),            # 8
            nn.ReLU(inplace=True),                                    # 9  -> stage 4
            nn.Conv2d(256, 256, kernel_size=3, padding=1),            # 10
            nn.ReLU(inplace=True),                                    # 11 -> stage 5
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the five ReLU stages."""
        outs = []
        for idx, layer in enumerate(self.features):
            x = layer(x)
            if idx in _ALEX_STAGE_ENDS:
                outs.append(x)
        return outs


class _LinearHead(nn.Module):
    """1x1 convolution to one channel, no bias; ``model.0`` was a dropout in training."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _LinearHeads(nn.Module):
    """The five heads with the published key names ``lin0`` ... ``lin4``."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", _LinearHead(c))

    def __getitem__(self, k: int) -> _LinearHead:
        return getattr(self, f"lin{k}")


def _load_file(path: PathLike, what: str) -> dict:
    """A state dict from a local file; a missing file is a clear FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS {what} file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_url(url: str, what: str, file_name: Optional[str] = None) -> dict:
    """A state dict through torch.hub (cached); a failed download names the URL and the fix."""
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                  check_hash=True, file_name=file_name,
                                                  weights_only=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatch a RuntimeError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / (file_name or Path(url).name)
        raise RuntimeError(
            f"could not obtain the LPIPS {what} from {url} ({type(exc).__name__}: {exc}); "
            f"place the file at {cache} or pass a local path") from exc


class LPIPS(nn.Module):
    """LPIPS distance with an AlexNet trunk and the v0.1 linear heads; frozen, eval mode.

    ``backbone_path``/``heads_path`` name local files; when absent the weights are fetched from
    ``backbone_url``/``heads_url`` through ``torch.hub`` (and cached there). Both are loaded
    strictly. ``forward(x, y)`` takes Bx3xHxW tensors in [0, 1] and returns B distances.
    """

    def __init__(self, net: str = "alex", backbone_path: Optional[PathLike] = None,
                 heads_path: Optional[PathLike] = None, backbone_url: str = ALEXNET_URL,
                 heads_url: Optional[str] = None) -> None:
        super().__init__()
        if net != "alex":
            raise ValueError(f"only net='alex' is supported, got {net!r}")
        self.net_name = net
        self.backbone = AlexNetFeatures()
        self.heads = _LinearHeads(ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

        # heads first: a missing local file should fail before any download
        if heads_path is not None:
            heads_sd = _load_file(heads_path, "linear heads")
            heads_src = str(heads_path)
        else:
            heads_src = heads_url or LPIPS_HEADS_URLS[net]
            # the published file gets a distinctive cache name; other URLs keep their own
            cache_name = _HEADS_FILE_NAMES[net] if heads_src == LPIPS_HEADS_URLS[net] else None
            heads_sd = _load_url(heads_src, "linear heads", cache_name)
        if backbone_path is not None:
            backbone_sd = _load_file(backbone_path, "backbone")
            backbone_src = str(backbone_path)
        else:
            backbone_src = backbone_url
            backbone_sd = _load_url(backbone_url, "backbone")

        features = {k: v for k, v in backbone_sd.items() if k.startswith("features.")}
        if not features:
            raise ValueError(f"LPIPS backbone {backbone_src} holds no 'features.*' keys "
                             f"(found e.g. {list(backbone_sd)[:3]})")
        self.backbone.load_state_dict(features, strict=True)
        self.heads.load_state_dict(heads_sd, strict=True)
        log.info("LPIPS(%s): backbone from %s, heads from %s", net, backbone_src, heads_src)

        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        """Stays in eval mode: LPIPS is a fixed measure, also when used inside a training model."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distances (shape B) between Bx3xHxW tensors with values in [0, 1]."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects Bx3xHxW tensors, got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIDE}x{MIN_SIDE}, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        batch = x.shape[0]
        both = torch.cat([x, y], dim=0)
        both = ((both * 2.0 - 1.0) - self.shift) / self.scale
        total = both.new_zeros(batch)
        for k, feat in enumerate(self.backbone(both)):
            unit = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)
            diff = (unit[:batch] - unit[batch:]).pow(2)
            total = total + self.heads[k](diff).mean(dim=(1, 2, 3))
        return total


_MODEL_CACHE: dict[str, LPIPS] = {}
_CACHE_LOCK = threading.Lock()


def get_lpips_model(device: Union[str, torch.device, None] = None) -> LPIPS:
    """The default LPIPS model (published weights via torch.hub), created once per device."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    key = str(dev)
    with _CACHE_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = LPIPS().to(dev)
        return _MODEL_CACHE[key]


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 array to a float32 1x3xHxW tensor in [0, 1] (a copy)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(device).float().div(255.0)[None]


@torch.no_grad()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int = 0,
                    model: Optional[LPIPS] = None) -> float:
    """LPIPS between two uint8 HxWx3 RGB images after removing ``crop_border`` pixels per side.

    ``model`` defaults to :func:`get_lpips_model` (published weights, cached per device); lower
    is more similar, 0 for identical images.
    """
    check_pair(img, img2)
    a = shave(img, crop_border, MIN_SIDE)
    b = shave(img2, crop_border, MIN_SIDE)
    if model is None:
        model = get_lpips_model()
    device = next(model.parameters()).device
    return float(model(_to_tensor(a, device), _to_tensor(b, device))[0])


__all__ = ["LPIPS", "AlexNetFeatures", "calculate_lpips", "get_lpips_model",
           "ALEXNET_URL", "LPIPS_HEADS_URLS", "MIN_SIDE"]
