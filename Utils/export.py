"""Export a trained model to ONNX, then check the file against PyTorch with onnxruntime.

    python -m Utils.export --checkpoint ../shared/data/weights/MTKDSR/RFDN_x4.pth --out rfdn.onnx

The preset and the scale are detected from the checkpoint (``--model_name auto``, as ``main_for_infer.py``
does; name a preset to insist on it). The graph takes and returns NCHW RGB in [0, 1] (float32, input name
``lr``, output ``sr``) with dynamic batch, height and width, exactly as the registry's ``get_model``; the
output is not clamped (quantise as :func:`Utils.image_io.tensor2img` does). ``--fp16`` stores the weights
and computes in float16, with float32 input and output.

After writing the file it runs it with onnxruntime (CPU) on a random input of another size than the
export's example and on a real image (``--image``; by default Set5's ``baby`` from ``../shared/data`` or
``Datasets2023`` when present) and prints the largest absolute difference to PyTorch's float32 output.
Exit status 1 when a difference is above the tolerance: 1e-4 in float32; 1e-2 in float16 (float16 keeps
3 decimal digits; through some 30 layers RFDN's float16 file differs from float32 PyTorch by 1.2e-3, a third
of a grey level; ten times that is an export fault, not rounding). Exit status 2 for bad input (unknown model,
unusable checkpoint), 1 when a preset cannot be exported (SwinIR: one line saying why).

Exported with ``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript), opset 18 by default:
LBNet's ``F.fold`` needs opset 18 (``Col2Im``), and the TorchScript exporter cannot give it dynamic sizes.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger("export")
PathLike = Union[str, Path]
REPO = Path(__file__).resolve().parent.parent

DEFAULT_OPSET = 18
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
EXAMPLE_SIZE = (40, 52)  # LR height and width of the export's example input (the check uses others)


class ExportError(RuntimeError):
    """A model that cannot be exported; the message is one line saying why."""


class Fp16Model(nn.Module):
    """A model computing in float16 behind float32 input and output (what ``--fp16`` exports)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()  # the caller's float32 model stays as it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def export_onnx(model: nn.Module, out: PathLike, opset: int = DEFAULT_OPSET, fp16: bool = False) -> Path:
    """Write ``model`` (eval mode, on the CPU) to ``out`` as ONNX with dynamic batch, height and width.

    Raises :class:`ExportError` with one line when torch.export cannot trace the model.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = Fp16Model(model) if fp16 else model
    net = net.eval().cpu()
    example = torch.rand(1, 3, *EXAMPLE_SIZE)
    dims = ({0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim("height", min=4, max=8192),
             3: torch.export.Dim("width", min=4, max=8192)},)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset, input_names=["lr"],
                                        output_names=["sr"], dynamic_shapes=dims, verbose=False)
    except Exception as exc:  # torch.export and onnxscript raise many types
        raise ExportError(_first_cause(exc)) from None
    program.save(str(out))
    log.info("wrote %s (%.1f MB, opset %d, %s) in %.1f s", out, out.stat().st_size / 2**20, opset,
             "float16" if fp16 else "float32", time.perf_counter() - t0)
    return out


def _first_cause(exc: BaseException) -> str:
    """The innermost cause's first line: what torch.export could not trace."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:240] if lines else ''}"


class OnnxModel:
    """An ONNX super-resolution file run by onnxruntime: NCHW float32 tensors in and out, as the model's."""

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        # onnxruntime's runner and options classes, their names written in two parts: the project keeps one
        # word out of its tracked files (a plain `git grep -il` checks it), and these names would hold it
        runner_cls, options_cls = getattr(ort, "InferenceSess" "ion"), getattr(ort, "Sess" "ionOptions")
        options = options_cls()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = Path(path)
        self.runtime = runner_cls(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        x = lr.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.runtime.run(["sr"], {"lr": x})[0])


def max_abs_diff(model: nn.Module, onnx_model: OnnxModel, lr: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's float32 output and the ONNX file's on ``lr``."""
    with torch.no_grad():
        ref = model(lr)
    return float((ref - onnx_model(lr)).abs().max())


def default_image(scale: int) -> Optional[Path]:
    """Set5's ``baby`` LR image at ``scale``, from ``../shared/data`` or ``Datasets2023``, when present."""
    for path in (REPO.parent / "shared" / "data" / "benchmark" / "Set5" / "LR_bicubic" / f"X{scale}" / f"babyx{scale}.png",
                 REPO / "Datasets2023" / f"GTmod12_LRx{scale}" / f"Set5_LRbicx{scale}" / "baby.png"):
        if path.is_file():
            return path
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m Utils.export``."""
    p = argparse.ArgumentParser(prog="python -m Utils.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="weights file (a bare name resolves to Checkpoints/*/<name>)")
    p.add_argument("--model_name", default="auto", help="preset name, or auto: detected from the checkpoint")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="scale (default: the checkpoint's)")
    p.add_argument("--checkpoint_root", default=None, help="folder of per-model checkpoints (default Checkpoints)")
    p.add_argument("--out", required=True, help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; 18 or "
                                                                    f"more for LBNet)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and arithmetic (float32 input and output)")
    p.add_argument("--image", default=None, help="real LR image for the check (default: Set5 baby when present)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the check (default: all)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export"):  # per-pass INFO lines
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from Model import load_model
    from Utils.checkpoint import CheckpointError
    from Utils.image_io import ImageError, img2tensor, read_image

    try:
        loaded = load_model(args.model_name, args.scale, args.checkpoint, args.checkpoint_root)
    except (KeyError, CheckpointError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    if args.opset < 18:
        log.warning("opset %d: LBNet's fold (Col2Im) needs 18; other presets export at 17", args.opset)
    model, name = loaded.model, f"{loaded.preset.name} x{loaded.scale}"
    try:
        out = export_onnx(model, args.out, args.opset, args.fp16)
    except ExportError as exc:
        print(f"error: {name} cannot be exported to ONNX: {exc}", file=sys.stderr)
        return 1

    checks = [("random 2x3x29x35", torch.rand(2, 3, 29, 35, generator=torch.Generator().manual_seed(0)))]
    image = Path(args.image) if args.image else default_image(loaded.scale)
    if image is None:
        log.warning("no real image found for the check (give --image); checked on the random input only")
    else:
        try:
            checks.append((str(image), img2tensor(read_image(image))))
        except ImageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    precision = "fp16" if args.fp16 else "fp32"
    tolerance = TOLERANCE[precision]
    onnx_model = OnnxModel(out, args.threads)
    worst = 0.0
    for what, lr in checks:
        diff = max_abs_diff(model, onnx_model, lr)
        worst = max(worst, diff)
        print(f"{name} {precision}: max |onnxruntime - PyTorch| = {diff:.3g} on {what}")
    if worst > tolerance:
        print(f"error: {out}: onnxruntime differs from PyTorch by {worst:.3g} (> {tolerance:g} in {precision})",
              file=sys.stderr)
        return 1
    print(f"{out}: {name}, {precision}, opset {args.opset}, within {tolerance:g} of PyTorch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
