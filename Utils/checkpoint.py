"""The one checkpoint loader (and atomic saver) of the project.

Loading = resolve the path, read it with ``weights_only=True``, canonicalise the wrappers
(``params_ema``, ``params``, ``state_dict``, ``model``...) and prefixes (``module.``, ``_orig_mod.``),
apply the family's conversion and filter (e.g. BasicSR's RRDBNet names, SwinIR's derivable buffers),
then load strictly. Every failure is a :class:`CheckpointError` with a one-line message that names
the file and the problem; a key mismatch lists the missing and unexpected keys and, from the preset,
the scale the file is for or the presets whose keys it does fit.

This module knows nothing of the model registry (``Model`` uses it, not the other way round): the
family-specific steps come from the ``preset`` argument, any object with the :class:`PresetLike` methods.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Union

import torch
import torch.nn as nn

from Utils.download import sha256_file  # noqa: F401  (one implementation, re-exported)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT_ROOT = REPO_ROOT / "Checkpoints"

# Wrapper keys, in order of preference (EMA weights are what BasicSR-style releases evaluate).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g", "generator", "netG")
PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


class PresetLike(Protocol):
    """What loading needs from a model preset (``Model.Preset`` is one)."""

    name: str

    def filter_state_dict(self, state_dict: dict, model: nn.Module) -> dict:
        """The state dict in the model's own key layout (``ValueError`` when it cannot be)."""

    def describe_fit(self, state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> str:
        """The end of a mismatch message: what the keys do fit (``"; ..."``)."""


def resolve_checkpoint(checkpoint: PathLike, model_name: Optional[str],
                       checkpoint_root: Optional[PathLike] = None) -> Path:
    """Find a checkpoint file: a path is used as given; a bare name resolves to ``Checkpoints/<Model>/<name>``.

    The preset's folder is matched case-insensitively (``Checkpoints/rfdn`` works for ``RFDN``); with
    ``model_name`` None (a preset to be detected) a bare name is looked for in every ``Checkpoints/*/``
    folder and must be found in exactly one.
    """
    root = Path(checkpoint_root) if checkpoint_root is not None else DEFAULT_CHECKPOINT_ROOT
    given = Path(checkpoint).expanduser()
    looked: list[Path] = [given]
    if given.is_file():
        return given
    if len(given.parts) == 1:
        candidates = [root / model_name / given.name] if model_name is not None else []
        if root.is_dir():
            candidates += [d / given.name for d in sorted(root.iterdir()) if d.is_dir() and (
                model_name is None or (d.name.lower() == model_name.lower() and d.name != model_name))]
        found = [c for c in candidates if c.is_file()]
        if model_name is None and len(found) > 1:
            raise CheckpointError(f"{checkpoint}: several checkpoints of that name ({', '.join(map(str, found))}); "
                                  f"give the path")
        if found:
            return found[0]
        looked += candidates if model_name is not None else [root / "*" / given.name]
    raise CheckpointError(f"{checkpoint}: checkpoint file not found (looked in: {', '.join(map(str, looked))})")


def read_checkpoint(path: PathLike) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; a file that is not a checkpoint raises one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    except Exception as exc:  # the unpickler raises many types on foreign or corrupt data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a PyTorch checkpoint that loads with weights_only=True "
                              f"({type(exc).__name__}: {first[:160]})") from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def canonicalize_state_dict(obj: Any, source: PathLike = "<state dict>") -> dict[str, torch.Tensor]:
    """Unwrap known wrappers and strip ``module.`` / ``_orig_mod.`` prefixes; return a flat tensor dict."""
    for _ in range(4):  # nested wrappers, e.g. {"model": {"params": ...}}
        if _is_tensor_dict(obj):
            break
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: checkpoint holds a {type(obj).__name__}, not a state dict")
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            keys = ", ".join(list(map(str, obj.keys()))[:8])
            raise CheckpointError(f"{source}: no state dict found (top-level keys: {keys}; "
                                  f"expected tensors or one of {', '.join(WRAPPER_KEYS)})")
        obj = inner
    else:
        raise CheckpointError(f"{source}: wrappers nested too deeply to find a state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """:func:`read_checkpoint` then :func:`canonicalize_state_dict`: the flat tensor dict of a file."""
    return canonicalize_state_dict(read_checkpoint(path), path)


def _mismatch_message(path: PathLike, name: str, missing: list[str], unexpected: list[str],
                      shapes: list[str]) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f", ... (+{len(keys) - 4})" if len(keys) > 4 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} of other shape: {few(shapes)}")
    return f"{path}: keys do not fit {name} ({'; '.join(parts)})"


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: PathLike,
                           preset: Optional[PresetLike] = None) -> None:
    """Load strictly (after the preset's conversion and filter); on any mismatch raise a one-line
    :class:`CheckpointError` that ends with what the preset says the keys do fit."""
    name = preset.name if preset is not None else type(model).__name__
    if getattr(model, "upscale", None):
        name = f"{name} x{model.upscale}"
    sd = dict(state_dict)
    if preset is not None:
        try:
            sd = preset.filter_state_dict(sd, model)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shapes:
        hint = preset.describe_fit(state_dict, model) if preset is not None else ""
        raise CheckpointError(_mismatch_message(source, name, missing, unexpected, shapes) + hint)
    model.load_state_dict(sd, strict=True)


def load_weights(model: nn.Module, checkpoint: PathLike, preset: Optional[PresetLike] = None,
                 checkpoint_root: Optional[PathLike] = None) -> Path:
    """Resolve, read, canonicalise and strictly load ``checkpoint`` into ``model``; returns the path."""
    path = resolve_checkpoint(checkpoint, preset.name if preset else type(model).__name__, checkpoint_root)
    load_state_dict_strict(model, read_state_dict(path), path, preset)
    log.info("loaded %s into %s", path, preset.name if preset else type(model).__name__)
    return path


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel / torch.compile wrappers (whose keys gain prefixes)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
