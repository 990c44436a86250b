"""Inference speed of every preset of the model zoo: ms per 1280x720 output and images/s.

Each preset is run through :func:`Utils.inference.super_resolve` (the code path of evaluation and
validation) on a random LR batch; the weights are the published ones where ``../shared/data/weights``
has them, random otherwise (weights do not change the cost). Variants of one preset are timed
interleaved (A, B, A, B, ...) and every preset takes its turn in each round, so background load hits
all alike; the median is reported.

Variants: ``fp32`` always; on CUDA also ``bf16`` and ``fp16`` autocast (``fp16`` only for presets with
``half_ok``; SwinIR overflows in float16) and ``+cl`` (channels-last model and input); ``--compile``
adds ``torch.compile`` variants. On the CPU autocast is not used (fp32 is exact and faster there).
``--onnx`` adds ``onnxrt``: the preset exported by :mod:`Utils.export` (float32, opset 18) and run by
onnxruntime on the CPU with as many threads as torch, interleaved with PyTorch's fp32 in the same run, so
its ``x vs fp32`` column is the onnxruntime / PyTorch speed ratio (a preset that cannot be exported,
SwinIR, is skipped with its reason).

Sizes: the default LR input is 320x180 (1280x720 output) on CUDA and 160x90 on the CPU, where a
720p output takes seconds per preset; ``--lr-size 320x180`` gives the full size. When the
LR size is not 320x180 the "ms/720p" column is *scaled* by the pixel count (printed as such): exact
for convolutional models, a lower bound for LBNet, whose attention runs over H*W/16-token blocks and
so grows faster than the pixel count. Examples::

    python bench/bench_inference.py                                 # CPU: 160x90 LR, all presets, 1-3 min
    python bench/bench_inference.py --device cpu --lr-size 320x180 --presets RFDN IMDN PAN
    python bench/bench_inference.py --channels-last-cpu             # also channels-last on the CPU
    python bench/bench_inference.py --device cuda --compile          # GPU: 720p, fp32/bf16/fp16/channels-last
    python bench/bench_inference.py --device cpu --onnx --presets RFDN LBNet IMDN   # onnxruntime vs PyTorch
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (PRESET_WEIGHTS, WEIGHTS, add_common_args, default_csv, describe, interleaved,  # noqa: E402
                    load_avg, machine_info, markdown_table, median, now, setup, write_csv)

from Model import MODELS, build_model, get_model  # noqa: E402
from Utils.inference import super_resolve  # noqa: E402

log = logging.getLogger("bench_inference")
FULL_W, FULL_H = 320, 180  # LR size of a 1280x720 x4 output


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 320x180), got {text!r}") from None
    return w, h


def load_preset(name: str, device: torch.device, random_weights: bool) -> tuple[torch.nn.Module, str]:
    """The preset in eval mode on ``device``, with published weights when available."""
    rel = PRESET_WEIGHTS.get(name)
    if not random_weights and rel and (WEIGHTS / rel).is_file():
        return get_model(name, checkpoint=WEIGHTS / rel).to(device), rel
    return build_model(name).eval().to(device), "random"


def variants_for(device: torch.device, half_ok: bool, compile_: bool, cpu_cl: bool) -> list[str]:
    """Variant names: precision, then ``+cl`` (channels-last) and ``+compile`` modifiers."""
    if device.type != "cuda":
        out = ["fp32"] + (["fp32+cl"] if cpu_cl else [])
        return out + (["fp32+compile"] if compile_ else [])
    half = "fp16" if half_ok else "bf16"
    out = ["fp32", "bf16"] + (["fp16"] if half_ok else []) + ["fp32+cl", f"{half}+cl"]
    if compile_:
        out += ["fp32+compile", f"{half}+cl+compile"]
    return out


def make_fn(model: torch.nn.Module, variant: str, x: torch.Tensor, pad_multiple: int, half_ok: bool):
    """A zero-argument callable running one super_resolve of ``x`` in ``variant``."""
    parts = variant.split("+")
    amp = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}[parts[0]]
    cl = "cl" in parts
    net = model
    if cl:
        net = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if "compile" in parts:
        net = torch.compile(net)
        # super_resolve reads the device of the first parameter: the compiled wrapper exposes them too

    def fn():
        return super_resolve(net, x, scale=4, pad_multiple=pad_multiple, amp=amp, half_ok=half_ok,
                             channels_last=cl)

    return fn


def make_onnx_fn(model: torch.nn.Module, name: str, x: torch.Tensor, folder: Path):
    """A zero-argument callable running ``x`` through the preset's ONNX export in onnxruntime (CPU, as many
    threads as torch), or None with a warning when the preset cannot be exported."""
    from Utils.export import ExportError, OnnxModel, export_onnx

    try:
        path = export_onnx(copy.deepcopy(model).cpu().float(), folder / f"{name}.onnx")
    except ExportError as exc:
        log.warning("%s: not exported to ONNX (%s); no onnxrt row", name, exc)
        return None
    onnx_model = OnnxModel(path, threads=torch.get_num_threads())
    x_cpu = x.cpu()
    return lambda: onnx_model(x_cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--presets", nargs="+", default=None, help="subset of presets (default: all)")
    p.add_argument("--lr-size", type=parse_size, default=None,
                   help="LR input WxH (default 320x180 on CUDA, 160x90 on CPU)")
    p.add_argument("--batch", type=int, default=1, help="images per forward")
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    p.add_argument("--channels-last-cpu", action="store_true", help="on the CPU also time channels-last")
    p.add_argument("--random-weights", action="store_true", help="never load the published weights")
    p.add_argument("--onnx", action="store_true", help="also time the ONNX export in onnxruntime (CPU)")
    p.set_defaults(warmup=1, repeats=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = setup(args)
    w, h = args.lr_size or ((FULL_W, FULL_H) if device.type == "cuda" else (160, 90))
    scaled = (w, h) != (FULL_W, FULL_H)
    px_factor = (FULL_W * FULL_H) / (w * h)
    names = args.presets or list(MODELS)
    info = machine_info(device)
    print(f"# inference benchmark: {describe(info)}")
    print(f"# LR {w}x{h} -> SR {4 * w}x{4 * h}, batch {args.batch}, warm-up {args.warmup}, "
          f"median of {args.repeats} interleaved repeats" +
          (f"; ms/720p scaled x{px_factor:.3g} by pixel count (a lower bound for LBNet)" if scaled else ""))

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory(prefix="bench_onnx_")
    fns: dict[tuple[str, str], object] = {}
    meta: dict[str, dict] = {}
    for name in names:
        preset = MODELS[name]
        model, weights = load_preset(name, device, args.random_weights)
        x = torch.rand(args.batch, 3, h, w, device=device)
        meta[name] = {"weights": weights, "params": sum(t.numel() for t in model.parameters())}
        for v in variants_for(device, preset.half_ok, args.compile, args.channels_last_cpu):
            fns[(name, v)] = make_fn(model, v, x, preset.pad_multiple, preset.half_ok)
        if args.onnx:
            onnx_fn = make_onnx_fn(model, name, x, Path(tmp.name))
            if onnx_fn is not None:
                fns[(name, "onnxrt")] = onnx_fn

    # Warm-up per variant (compile happens here), then rounds over all (preset, variant) pairs.
    keyed = {f"{n}|{v}": fn for (n, v), fn in fns.items()}
    times = interleaved(keyed, device, warmup=args.warmup, repeats=args.repeats)

    rows = []
    base: dict[str, float] = {}
    for (name, v) in fns:
        t = median(times[f"{name}|{v}"])
        if v == "fp32":
            base[name] = t
        ms_720 = t * 1000 / args.batch * px_factor
        quadratic = MODELS[name].factory.startswith("lbnet:")  # attention over H*W/16-token blocks
        note = "" if not scaled else ("scaled; lower bound" if quadratic and px_factor > 1 else "scaled")
        rows.append({"time": now(), "preset": name, "variant": v, "weights": meta[name]["weights"], "note": note,
                     "params_k": round(meta[name]["params"] / 1e3, 1), "lr_w": w, "lr_h": h, "batch": args.batch,
                     "ms_per_batch": t * 1000, "images_per_s": args.batch / t, "ms_per_720p": ms_720,
                     "images_per_s_720p": 1000 / ms_720, "ms_720p_scaled": int(scaled),
                     "speedup_vs_fp32": base[name] / t, "repeats": len(times[f"{name}|{v}"]),
                     "min_ms": min(times[f"{name}|{v}"]) * 1000, **info, "load_avg_end": load_avg()})
    cols = ["preset", "variant", "params_k", "ms_per_batch", "images_per_s", "ms_per_720p", "images_per_s_720p",
            "speedup_vs_fp32"] + (["note"] if scaled else [])
    heads = ["preset", "variant", "params (k)", f"ms / {4 * w}x{4 * h}", "images/s",
             "ms / 720p" + (" (scaled)" if scaled else ""), "720p images/s" + (" (scaled)" if scaled else ""),
             "x vs fp32"] + (["720p figure"] if scaled else [])
    print(markdown_table(rows, cols, heads))
    print(f"# load average (1 min): start {info['load_avg_1m']}, end {load_avg()}")
    out = write_csv(args.csv or default_csv(__file__), rows)
    print(f"# appended {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
