"""Model zoo: one registry of presets, ``get_model`` to build (and load) any of them, and the
detection of which preset and scale a checkpoint belongs to.

Every preset is a plain ``nn.Module`` that takes and returns RGB in [0, 1] (NCHW float).
Families live in their own modules and are imported lazily, so that one broken optional
module never breaks the whole package.

    >>> from Model import get_model
    >>> net = get_model("RFDN", checkpoint="DTKD-RFDN.pth")     # scale read from the file's shapes
    >>> net = get_model("auto", checkpoint="IMDN_x2.pth")       # preset and scale read from the file

Dependencies run one way: this package uses :mod:`Utils.checkpoint` (reading, canonicalising,
strict loading), which knows nothing of the registry; a :class:`Preset` hands it the family's
key conversion and the hint for a mismatch.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn

__all__ = ["Preset", "MODELS", "SCALES", "CheckpointFit", "LoadedModel", "get_model", "load_model", "get_preset",
           "build_model", "preset_names", "checkpoint_fits", "detect_checkpoint"]

log = logging.getLogger(__name__)

SCALES = (2, 3, 4)  # the scales the framework handles end to end
AUTO = "auto"  # model name that detects the preset (and scale) from the checkpoint


@dataclass(frozen=True)
class Preset:
    """A named configuration of an architecture, with the paper's constructor arguments.

    ``factory`` is ``"module:Class"`` relative to this package; ``kwargs`` are the paper's
    arguments; ``scales`` the scales the architecture is defined for; ``pad_multiple`` is what
    the input size must be a multiple of (SwinIR: its window); ``half_ok`` says whether float16
    autocast is safe (SwinIR overflows in fp16). ``converter`` (``"module:function"``) renames a
    foreign key layout to ours and names the layout it found; ``checkpoint_filter`` adapts a state
    dict to a built model (e.g. fills derivable buffers, whose key suffixes are ``optional_keys``).
    """

    name: str
    factory: str
    kwargs: dict = field(default_factory=dict)
    role: str = "baseline"
    scales: tuple[int, ...] = SCALES
    pad_multiple: int = 1
    half_ok: bool = True
    converter: Optional[str] = None
    checkpoint_filter: Optional[str] = None
    optional_keys: tuple[str, ...] = ()
    reference: str = ""

    def _function(self, spec: str):
        module_name, fn_name = spec.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module_name}"), fn_name)

    def build(self, scale: int = 4) -> nn.Module:
        """Instantiate the architecture (random weights) for the given scale."""
        if scale not in self.scales:
            raise ValueError(f"{self.name} is defined for {', '.join(f'x{s}' for s in self.scales)}, not x{scale}")
        return self._function(self.factory)(upscale=scale, **self.kwargs)

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

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, Optional[str]]:
        """``(state dict in our key names, layout found)``; the layout is None for families with one layout."""
        if self.converter is None:
            return dict(state_dict), None
        return self._function(self.converter)(dict(state_dict))

    def filter_state_dict(self, state_dict: dict, model: nn.Module) -> dict:
        """Convert a foreign key layout (logging the layout found) and apply the family's adapter."""
        state_dict, layout = self.convert_state_dict(state_dict)
        if layout is not None:
            log.info("%s: checkpoint keys in the %s layout", self.name, layout)
        if self.checkpoint_filter is None:
            return state_dict
        return self._function(self.checkpoint_filter)(state_dict, model)

    def describe_fit(self, state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> str:
        """The end of a mismatch message: the key layout found (families with several), then the scale the
        file is for or the presets its keys fit."""
        layout = self.convert_state_dict(state_dict)[1]
        return (f"; keys read in the {layout} layout" if layout else "") + self._fit_hint(state_dict, model)

    def _fit_hint(self, state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> str:
        fits = checkpoint_fits(state_dict)
        asked = getattr(model, "upscale", None)
        same = [f for f in fits if f.preset == self.name and f.scale != asked]
        if same:
            return (f"; the file is for {_scales_text(same)}, not x{asked} (these keys fit preset "
                    f"{' / '.join(map(str, same))}): build the model at that scale")
        if fits:
            return f"; these keys fit preset {' / '.join(map(str, fits))}"
        return "; they fit no known preset"


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
               checkpoint_filter="swinir:checkpoint_filter", optional_keys=("relative_position_index", "attn_mask"),
               reference="Liang et al., SwinIR (lightweight SwinIR-S), ICCVW 2021"),
        Preset("EdgeSRN", "rrdbnet:RRDBNet", dict(in_nc=3, out_nc=3, nf=64, nb=10, gc=32), role="perceptual teacher",
               scales=(2, 4), converter="rrdbnet:convert_state_dict",
               reference="SRDTKD perceptual teacher: RRDBNet (10 blocks) trained with edge-guided losses"),
        Preset("EdgeSRN_small", "rrdbnet:RRDBNet", dict(in_nc=3, out_nc=3, nf=32, nb=2, gc=16),
               role="perceptual teacher (demo)", scales=(2, 4), converter="rrdbnet:convert_state_dict",
               reference="EdgeSRN architecture at demo size (2 RRDB blocks, 32 features) for CPU runs"),
        Preset("ESRGAN", "rrdbnet:RRDBNet", dict(in_nc=3, out_nc=3, nf=64, nb=23, gc=32),
               scales=(2, 4), converter="rrdbnet:convert_state_dict",
               reference="Wang et al., ESRGAN, ECCVW 2018 (official key names; BasicSR's converted on load)"),
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
        raise KeyError(f"unknown model name {name!r}; valid names: {', '.join(MODELS)} (or {AUTO}, with a checkpoint)")
    return MODELS[key]


def build_model(name: str, scale: int = 4) -> nn.Module:
    """Build a preset with random weights, in train mode (for training from scratch)."""
    return get_preset(name).build(scale)


# ----------------------------------------------------------------------------- checkpoint detection

@dataclass(frozen=True)
class CheckpointFit:
    """A preset and scale whose keys and shapes a state dict equals, and the key layout it was in."""

    preset: str
    scale: int
    layout: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.preset} x{self.scale}"


@lru_cache(maxsize=None)
def _signature(name: str, scale: int) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a preset at a scale (built on the meta device: no memory, no init cost)."""
    return {k: tuple(v.shape) for k, v in MODELS[name].build_meta(scale).state_dict().items()}


def checkpoint_fits(state_dict: Mapping[str, torch.Tensor],
                    names: Optional[Iterable[str]] = None) -> list[CheckpointFit]:
    """Every (preset, scale) whose keys and shapes equal ``state_dict``'s, after the family's key conversion.

    ``state_dict`` is canonical (wrappers and prefixes removed, see :func:`Utils.checkpoint.read_state_dict`);
    keys a family can derive (``Preset.optional_keys``) may be absent. ``names`` limits the presets tried.
    """
    found = []
    for name in (MODELS if names is None else names):
        preset = MODELS[name]
        converted, layout = preset.convert_state_dict(state_dict)
        given = {k: tuple(v.shape) for k, v in converted.items()}
        for scale in preset.scales:
            try:
                sig = _signature(name, scale)
            except Exception as exc:  # a broken family must not hide the others
                log.debug("cannot build preset %s x%d for matching: %s", name, scale, exc)
                continue
            absent = {k for k in sig if k not in given}
            if (all(sig.get(k) == s for k, s in given.items())
                    and all(k.endswith(preset.optional_keys) for k in absent)):
                found.append(CheckpointFit(name, scale, layout))
    return found


def _closest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The presets whose key names overlap the file's most, as ``name (share of shared keys)``."""
    scores = []
    for name, preset in MODELS.items():
        keys = set(preset.convert_state_dict(state_dict)[0])
        try:
            own = set(_signature(name, max(preset.scales)))
        except Exception:  # noqa: BLE001 - see checkpoint_fits
            continue
        shared = len(keys & own) / max(len(keys | own), 1)
        if shared > 0:
            scores.append((shared, name))
    best = sorted(scores, reverse=True)[:3]
    return ", ".join(f"{n} ({s:.0%} of key names shared)" for s, n in best) or "none shares a key name"


def _scales_text(fits: Iterable[CheckpointFit]) -> str:
    return " / ".join(dict.fromkeys(f"x{f.scale}" for f in fits))


def detect_checkpoint(state_dict: Mapping[str, torch.Tensor], source: Union[str, Path] = "<state dict>",
                      scale: Optional[int] = None, names: Optional[Iterable[str]] = None) -> CheckpointFit:
    """The one (preset, scale) a canonical state dict fits, among the presets ``names`` (default all) and
    at ``scale`` when given; an unknown or ambiguous file, or one for another scale, raises one line.

    Some families have the same shapes at several scales (PAN at x2 and x3: nearest-neighbour
    upsampling); their files need the scale given.
    """
    from Utils.checkpoint import CheckpointError

    names = None if names is None else list(names)
    fits = checkpoint_fits(state_dict, names)
    if scale is not None and fits:
        at_scale = [f for f in fits if f.scale == scale]
        if not at_scale:
            raise CheckpointError(f"{source}: the file is for {_scales_text(fits)} "
                                  f"(preset {' / '.join(map(str, fits))}), not x{scale}")
        fits = at_scale
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise CheckpointError(f"{source}: fits no {'preset' if names is None else ' / '.join(names)} at any scale; "
                              f"candidates: {_closest(state_dict)}")
    if len({f.preset for f in fits}) == 1:
        raise CheckpointError(f"{source}: ambiguous, fits {', '.join(map(str, fits))} (the same shapes at these "
                              f"scales); give the scale")
    raise CheckpointError(f"{source}: ambiguous, fits {', '.join(map(str, fits))}; give the preset name instead of "
                          f"{AUTO}")


# ----------------------------------------------------------------------------- building and loading

@dataclass
class LoadedModel:
    """What :func:`load_model` built: the module (eval mode), its preset and scale, and the file it loaded."""

    model: nn.Module
    preset: Preset
    scale: int
    checkpoint: Optional[Path] = None
    layout: Optional[str] = None


def load_model(name: str, scale: Optional[int] = None, checkpoint: Union[str, Path, None] = None,
               checkpoint_root: Union[str, Path, None] = None) -> LoadedModel:
    """Build preset ``name`` in eval mode and load ``checkpoint`` strictly when given.

    ``name`` may be ``"auto"``: the preset is detected from the checkpoint's keys and shapes.
    ``scale`` None takes the checkpoint's scale (4 without a checkpoint; a family with the same
    shapes at several scales, PAN at x2 and x3, needs it given); a scale the file is not for fails
    with one line naming the scale it is for. A bare checkpoint file name resolves to
    ``Checkpoints/<preset>/<name>`` (for ``auto``: the one ``Checkpoints/*/<name>``); a path is used as given.
    """
    from Utils.checkpoint import CheckpointError, load_state_dict_strict, read_state_dict, resolve_checkpoint

    auto = str(name).lower() == AUTO
    if checkpoint is None:
        if auto:
            raise ValueError(f"model name {AUTO!r} needs a checkpoint to detect the preset from")
        preset = get_preset(name)
        scale = 4 if scale is None else scale
        return LoadedModel(preset.build(scale).eval(), preset, scale)
    preset = None if auto else get_preset(name)
    path = resolve_checkpoint(checkpoint, None if auto else preset.name, checkpoint_root)
    state_dict = read_state_dict(path)
    names = None if auto else [preset.name]
    if auto or (scale is None and checkpoint_fits(state_dict, names)):
        fit = detect_checkpoint(state_dict, path, scale, names)
        preset, scale = MODELS[fit.preset], fit.scale
        log.info("%s: detected preset %s", path, fit)
    elif scale is None:
        scale = 4  # keys of another preset: the strict load at x4 says what they fit
    model = preset.build(scale)
    load_state_dict_strict(model, state_dict, path, preset)
    log.info("loaded %s into %s x%d", path, preset.name, scale)
    return LoadedModel(model.eval(), preset, scale, path, preset.convert_state_dict(state_dict)[1])


def get_model(name: str, scale: Optional[int] = None, checkpoint: Union[str, Path, None] = None,
              checkpoint_root: Union[str, Path, None] = None) -> nn.Module:
    """Build preset ``name`` (or ``"auto"``) for ``scale`` in eval mode, loading ``checkpoint`` strictly when
    given; see :func:`load_model`, which also returns the preset and scale it chose."""
    return load_model(name, scale, checkpoint, checkpoint_root).model
