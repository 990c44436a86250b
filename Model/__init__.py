"""Model zoo: one registry of presets, and ``get_model`` to build (and load) any of them.

Every preset is a plain ``nn.Module`` that takes and returns RGB in [0, 1] (NCHW float).
Families live in their own modules and are imported lazily, so that one broken optional
module never breaks the whole package.

    >>> from Model import get_model
    >>> net = get_model("RFDN", checkpoint="DTKD-RFDN.pth")
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = ["Preset", "MODELS", "get_model", "get_preset", "build_model", "preset_names"]


@dataclass(frozen=True)
class Preset:
    """A named configuration of an architecture, with the paper's constructor arguments.

    ``factory`` is ``"module:Class"`` relative to this package; ``kwargs`` are the paper's
    arguments; ``pad_multiple`` is what the input size must be a multiple of (SwinIR: its
    window); ``half_ok`` says whether float16 autocast is safe (SwinIR overflows in fp16).
    """

    name: str
    factory: str
    kwargs: dict = field(default_factory=dict)
    role: str = "baseline"
    pad_multiple: int = 1
    half_ok: bool = True
    checkpoint_filter: Optional[str] = None  # "module:function" that adapts a state dict
    reference: str = ""

    def build(self, scale: int = 4) -> nn.Module:
        """Instantiate the architecture (random weights) for the given scale."""
        module_name, cls_name = self.factory.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, cls_name)(upscale=scale, **self.kwargs)

    def build_meta(self, scale: int = 4) -> nn.Module:
        """Build without memory or init cost on the meta device (for shapes and operation counts).

        A family whose constructor needs real data (e.g. computes masks with Python scalars) is
        built on the CPU and then moved to the meta device.
        """
        try:
            with torch.device("meta"):
                return self.build(scale)
        except (NotImplementedError, RuntimeError):
            return self.build(scale).to("meta")

    def filter_state_dict(self, state_dict: dict, model: nn.Module) -> dict:
        """Apply the family's format adapter (e.g. add SwinIR's derivable buffers)."""
        if self.checkpoint_filter is None:
            return state_dict
        module_name, fn_name = self.checkpoint_filter.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, fn_name)(state_dict, model)


MODELS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("RFDN", "rfdn:RFDN", dict(in_nc=3, nf=64, num_modules=4, out_nc=3), role="student",
               reference="Liu et al., Residual Feature Distillation Network, ECCVW 2020 (nf 64 as in SRDTKD)"),
        Preset("RFDN_AIM", "rfdn:RFDN", dict(in_nc=3, nf=50, num_modules=4, out_nc=3, img_range=255.0),
               reference="RFDN, AIM 2020 challenge release (nf 50, 0-255 input)"),
        Preset("LBNet", "lbnet:LBNet", dict(num_in_ch=3, num_out_ch=3, num_feat=32, num_head=8), role="student",
               reference="Gao et al., Lightweight Bimodal Network, IJCAI 2022"),
        Preset("LBNet_tiny", "lbnet:LBNet", dict(num_in_ch=3, num_out_ch=3, num_feat=18, num_head=6),
               reference="LBNet-T, IJCAI 2022"),
        Preset("IMDN", "imdn:IMDN", dict(in_nc=3, nf=64, num_modules=6, out_nc=3), role="fidelity teacher",
               reference="Hui et al., Information Multi-Distillation Network, ACM MM 2019"),
        Preset("SwinIR", "swinir:SwinIR",
               dict(in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=(6, 6, 6, 6), embed_dim=60,
                    num_heads=(6, 6, 6, 6), mlp_ratio=2.0, upsampler="pixelshuffledirect", resi_connection="1conv"),
               role="fidelity teacher", pad_multiple=8, half_ok=False,
               checkpoint_filter="swinir:checkpoint_filter",
               reference="Liang et al., SwinIR (lightweight SwinIR-S), ICCVW 2021"),
        Preset("EdgeSRN", "rrdbnet:RRDBNet", dict(in_nc=3, out_nc=3, nf=64, nb=10, gc=32), role="perceptual teacher",
               reference="SRDTKD perceptual teacher: RRDBNet (10 blocks) trained with edge-guided losses"),
        Preset("EdgeSRN_small", "rrdbnet:RRDBNet", dict(in_nc=3, out_nc=3, nf=32, nb=2, gc=16),
               role="perceptual teacher (demo)",
               reference="EdgeSRN architecture at demo size (2 RRDB blocks, 32 features) for CPU runs"),
        Preset("ESRGAN", "rrdbnet:RRDBNet", dict(in_nc=3, out_nc=3, nf=64, nb=23, gc=32),
               reference="Wang et al., ESRGAN, ECCVW 2018 (official key names)"),
        Preset("PAN", "pan:PAN", dict(in_nc=3, out_nc=3, nf=40, unf=24, nb=16),
               reference="Zhao et al., Pixel Attention Network, ECCVW 2020"),
    ]
}

_BY_LOWER = {k.lower(): k for k in MODELS}


def preset_names() -> list[str]:
    """All preset names, in registry order."""
    return list(MODELS)


def get_preset(name: str) -> Preset:
    """Look a preset up by name, case-insensitively; unknown names list the valid ones."""
    key = _BY_LOWER.get(str(name).lower())
    if key is None:
        raise KeyError(f"unknown model name {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[key]


def build_model(name: str, scale: int = 4) -> nn.Module:
    """Build a preset with random weights, in train mode (for training from scratch)."""
    return get_preset(name).build(scale)


def get_model(name: str, scale: int = 4, checkpoint: Union[str, Path, None] = None,
              checkpoint_root: Union[str, Path, None] = None) -> nn.Module:
    """Build preset ``name`` for ``scale`` in eval mode, loading ``checkpoint`` strictly when given.

    A bare checkpoint file name resolves to ``Checkpoints/<preset>/<name>``; a path is used as given.
    """
    preset = get_preset(name)
    model = preset.build(scale)
    if checkpoint is not None:
        from Utils.checkpoint import load_weights

        load_weights(model, checkpoint, preset=preset, checkpoint_root=checkpoint_root)
    return model.eval()

