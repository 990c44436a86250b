"""Training CLI (the seed's flags, plus iteration-bounded, resumable, multi-GPU training).

    python main.py --model_name RFDN --train_hr ../shared/data/train/T91/HR --valid_dataset Set5 \\
        --iters 300 --name rfdn_t91
    torchrun --nproc_per_node 4 main.py --config my_run.yaml       # same flags, several GPUs
    python main.py --config my_run.yaml --auto_resume              # continue after a crash

``--config FILE``: a YAML file whose keys are the flag names (without ``--``); it sets the defaults
and the command line overrides it; an unknown key is an error. ``--train_by_TT False`` trains on
ground truth (baselines, teachers); ``True`` distils with the DTKD objective. ``--kd_method
{gt,dtkd,output,fakd,fitnet,at,dukd}`` picks any objective of ``Utils/objectives/`` (the field's KD baselines).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from main_for_infer import str2bool

log = logging.getLogger("main")


def _gate(value: str) -> str:
    from Utils.routing import parse_gate

    parse_gate(value)  # validates; kept as text so the config stays readable
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", default=None, help="YAML file of defaults (keys = flag names)")
    a("--Train", type=str2bool, default=True, help="False: only validate --checkpoint on --valid_dataset")
    # model and data
    a("--model_name", default="RFDN", help="preset to train (python -m Model lists them)")
    a("--checkpoint", default=None, help="initial weights (fine-tuning); bare names resolve to Checkpoints/<Model>/")
    a("--scale", type=int, default=4)
    a("--root", default=None, help="DIV2K-style root: DIV2K_train_HR/ and DIV2K_train_LR_bicubic/X<scale>/")
    a("--train_hr", nargs="+", default=None, help="HR training folder(s)")
    a("--train_lr", nargs="+", default=None, help="matching LR folder(s); LR made with MATLAB bicubic when absent")
    a("--cache_dir", default=None, help="decoded-image cache (.npy) folder; default <experiments_root>/cache")
    a("--patch_size", type=int, default=192, help="HR patch size")
    a("--batch_size", type=int, default=16, help="total batch size (split across processes)")
    a("--repeat", type=int, default=1, help="dataset repeat factor")
    a("--rgb_permute", type=str2bool, default=False, help="random RGB channel permutation")
    a("--num_workers", type=int, default=2)
    # validation
    a("--valid_dataset", default="Set5", help="set name under --datasets_root, or an LR folder ('' for none)")
    a("--valid_gt", default=None, help="ground truth of the validation folder (default: found beside it)")
    a("--datasets_root", default="Datasets2023")
    a("--test_every", type=int, default=1000, help="validate every N iterations (0: never)")
    # optimisation
    a("--iters", type=int, default=100_000, help="training length in iterations")
    a("--lr", type=float, default=5e-4)
    a("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    a("--weight_decay", type=float, default=0.0)
    a("--scheduler", default="cosine", choices=["step", "multistep", "cosine", "constant"])
    a("--lr_step", type=int, default=200_000, help="step scheduler: iterations between decays")
    a("--milestones", type=int, nargs="+", default=None, help="multistep scheduler milestones")
    a("--gamma", type=float, default=0.5)
    a("--eta_min", type=float, default=1e-7, help="cosine scheduler: final learning rate")
    a("--grad_clip", type=float, default=0.0)
    a("--ema", type=float, default=0.0, help="EMA decay of the weights (0: off; e.g. 0.999)")
    a("--seed", type=int, default=0)
    # speed
    a("--amp", choices=["none", "bf16", "fp16"], default="none")
    a("--compile", action="store_true", help="torch.compile the student")
    a("--channels_last", action="store_true")
    a("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    # run bookkeeping
    a("--name", default=None, help="run name (default: <model_name>_<mode>)")
    a("--experiments_root", default="experiments")
    a("--resume", default=None, help="checkpoints/latest.pth to resume from")
    a("--auto_resume", action="store_true", help="resume from <experiments_root>/<name>/checkpoints/latest.pth")
    a("--save_every", type=int, default=500)
    a("--snapshots", type=int, nargs="+", default=[],
      help="iterations whose weights (the EMA's when on) are also kept as weights/iter_<N>.pth, to evaluate "
           "the run's trajectory later (studies' eval_marks); training is unchanged")
    a("--max_nonfinite", type=int, default=20, help="stop after this many non-finite losses in a row")
    a("--tensorboard", action="store_true")
    a("--quiet", action="store_true", help="no progress bar")
    # losses (names as in the original code)
    a("--Rate_l1", type=float, default=1.0, help="weight of L1 to the ground truth")
    a("--Rate_lm", type=float, default=0.0, help="weight of the edge loss (EdgeSRN stage 2, DTKD)")
    a("--Rate_lpts", type=float, default=0.0, help="weight of the VGG19 conv5_4 perceptual loss")
    a("--Rate_lbp", type=float, default=0.0, help="weight of the back-projection loss")
    a("--edge_kind", default="sobel", choices=["sobel", "laplacian"])
    a("--Rate_tex", type=float, default=0.0,
      help="weight of the texture-statistics loss (ours, weight-free): to the perceptual teacher on "
           "texture-rich samples in DTKD, to the ground truth otherwise (EdgeSRN stage 2)")
    a("--tex_kind", default="gradw1", choices=["gradw1", "lapw1", "spectrum", "radial", "mscn", "gram"],
      help="texture statistics: local distributions (Wasserstein-1) of Sobel derivatives (gradw1), of the "
           "Laplacian (lapw1) or of MSCN coefficients and their neighbour products (mscn), or local "
           "amplitude spectra (spectrum) or their ring averages (radial: detail per scale, any orientation), or "
           "Gram matrices of fixed random multi-scale filter responses (gram)")
    a("--tex_window", type=int, default=16, help="tile size (HR pixels) of the texture statistics")
    a("--gt_usm", type=float, default=0.0,
      help="training on ground truth: sharpen the HR targets with an unsharp mask of this amount "
           "(as Real-ESRGAN does; 0: off); for a perceptual teacher's stage 2")
    a("--gt_usm_sigma", type=float, default=1.0, help="Gaussian sigma (HR pixels) of --gt_usm")
    a("--vgg_weights", default=None, help="local VGG19 weights (default: torchvision's file via torch.hub)")
    # distillation (DTKD)
    a("--train_by_TT", type=str2bool, default=False, help="True: dual-teacher distillation")
    a("--t1_model_name", default="IMDN", help="fidelity teacher preset")
    a("--t1_checkpoint", default=None, help="fidelity teacher weights")
    a("--t2_model_name", default="EdgeSRN", help="perceptual teacher preset")
    a("--t2_checkpoint", default=None, help="perceptual teacher weights ('' for no perceptual teacher)")
    a("--Rate_kd", type=float, default=1.0, help="weight of the distillation term")
    a("--entropy_gate", type=_gate, default="auto", help="auto, none, or a value in bits")
    a("--loss_attn", default="both", choices=["none", "error", "trust", "both"])
    a("--t2_pixel_kd", type=str2bool, default=True,
      help="True (the paper): the perceptual teacher's pixels are the KD target of the samples routed to it; "
           "False (ours): the KD target is always the fidelity teacher, the perceptual teacher teaches only "
           "through its statistics terms (--Rate_tex, --Rate_lm, --Rate_lpts)")
    a("--t2_band", type=float, default=0.0,
      help="ours: on samples routed to the perceptual teacher, the KD target is the fidelity teacher's "
           "low frequencies plus the perceptual teacher's high frequencies, split by a Gaussian of this "
           "sigma (HR pixels): G*F + (P - G*P); 0: off (the routed teacher's whole image)")
    a("--t2_blend", type=float, default=0.0,
      help="ours: on samples routed to the perceptual teacher, the KD target is the pixel blend "
           "(1 - A) F + A P of the two teachers' outputs (0: off, P's own image)")
    a("--Rate_pfeat", type=float, default=0.0,
      help="ours: weight of the perceptual teacher's feature hints (FitNet: learned 1x1 adapters, MSE) at "
           "the presets' declared feature points, on texture-rich samples; P runs on the fly for them")
    a("--Rate_adv", type=float, default=0.0,
      help="ours: weight of an adversarial term (relativistic patch GAN; the discriminator is learned from "
           "scratch, no pretrained network); DTKD: on texture-rich samples")
    a("--adv_real", default="auto", choices=["auto", "gt", "teacher", "both"],
      help="what the discriminator learns as real: the ground truth, or (DTKD) the perceptual teacher's "
           "outputs, or both; auto: the teacher when there is one, else the ground truth")
    a("--adv_trust", type=str2bool, default=False,
      help="ours (DTKD): weight the student's adversarial term per discriminator patch by the fraction of "
           "pixels where P is closer to the ground truth than the student (realism only where P is trusted)")
    a("--adv_lr", type=float, default=1e-4, help="the discriminator's Adam learning rate")
    a("--adv_channels", type=int, default=64, help="the discriminator's width at full resolution")
    a("--adv_amp", type=str2bool, default=False,
      help="ours: the discriminator's own update under the run's bf16 autocast too (needs --amp bf16; "
           "about 20%% of a step faster on a CPU with native bfloat16); default float32")
    a("--adv_start", type=int, default=0,
      help="ours: iterations of warm-up before the adversarial term and its discriminator start (0: from "
           "the first); the network learns from its pixel losses first, as ESRGAN starts from a PSNR model")
    a("--teacher_cache", default=None, help="folder for cached teacher outputs (computed once)")
    # the field's KD baselines (Utils/objectives/; the teacher is --t1_model_name / --t1_checkpoint)
    a("--kd_method", default=None, choices=["gt", "dtkd", "output", "fakd", "fitnet", "at", "dukd"],
      help="training objective (default: dtkd with --train_by_TT True, else gt = ground truth only); "
           "output: L1 to the teacher's output (--Rate_kd) + L1 to ground truth (--Rate_l1); fakd / fitnet / at: "
           "feature distillation at the presets' declared feature points, teacher run on the fly; dukd: "
           "output KD plus teacher-labelled zoom-in / zoom-out samples under invertible transforms")
    a("--Rate_feat", type=float, default=None,
      help="weight of the feature-distillation term (default: the paper's; fakd 10, fitnet 1, at 500 = beta/2)")
    a("--kd_student_points", nargs="+", default=None,
      help="student module names to distil features at (default: the preset's declared points)")
    a("--kd_teacher_points", nargs="+", default=None,
      help="teacher module names paired with them (default: evenly spaced declared points)")
    a("--Rate_dukd", type=float, default=1.0, help="dukd: weight of each upcycled-sample term (zoom-in, zoom-out)")
    a("--dukd_zoom_in", type=int, default=2,
      help="dukd: zoom-in inputs are HR crops downscaled by this factor (1: the crop at HR resolution)")
    a("--dukd_zoom_out", type=int, default=2, help="dukd: zoom-out inputs are the LR downscaled by this factor")
    a("--dukd_consistency", type=str2bool, default=True,
      help="dukd: the student sees upcycled inputs under a random flip/rotation, its output mapped back")
    return p


def parse_config(argv: Optional[Sequence[str]] = None) -> dict:
    """Flags, with ``--config`` YAML keys as defaults; unknown YAML keys are an error."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        path = Path(pre.config)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            parser.error(f"{path}: cannot read the config ({exc})")
        if not isinstance(data, dict):
            parser.error(f"{path}: the config must be a mapping of flag names to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(data) - known)
        if unknown:
            parser.error(f"{path}: unknown key(s) {', '.join(unknown)}")
        parser.set_defaults(**data)
    cfg = vars(parser.parse_args(argv))
    if cfg["name"] is None:
        cfg["name"] = f"{cfg['model_name']}_{cfg['kd_method'] or ('dtkd' if cfg['train_by_TT'] else 'gt')}"
    if cfg["cache_dir"] is None:
        cfg["cache_dir"] = str(Path(cfg["experiments_root"]) / "cache")
    for key, low in (("iters", 1), ("batch_size", 1), ("save_every", 1), ("max_nonfinite", 1), ("test_every", 0),
                     ("patch_size", 1), ("scale", 1), ("adv_start", 0)):
        if cfg[key] < low:
            parser.error(f"--{key} must be at least {low}, got {cfg[key]}")
    bad = [n for n in cfg["snapshots"] if not 1 <= n <= cfg["iters"]]
    if bad:
        parser.error(f"--snapshots: {bad[0]} is not an iteration of this run (1..{cfg['iters']})")
    if cfg["train_lr"] is not None and cfg["train_hr"] is not None and len(cfg["train_lr"]) != len(cfg["train_hr"]):
        parser.error(f"--train_lr: {len(cfg['train_lr'])} folders for {len(cfg['train_hr'])} --train_hr folders")
    if cfg["adv_amp"] and cfg["amp"] != "bf16":
        parser.error(f"--adv_amp True needs --amp bf16 (got --amp {cfg['amp']}): the discriminator has no "
                     "gradient scaler for fp16")
    if cfg["Rate_adv"] > 0 and cfg["adv_start"] >= cfg["iters"]:
        log.warning("--adv_start %d >= --iters %d: the adversarial term never starts in this run",
                    cfg["adv_start"], cfg["iters"])
    return cfg


def _validate_only(cfg: dict) -> int:
    import main_for_infer

    if not cfg["checkpoint"]:
        log.error("--Train False needs --checkpoint")
        return 2
    v = Path(cfg["valid_dataset"])
    folder = v if v.is_dir() else Path(cfg["datasets_root"]) / f"GTmod12_LRx{cfg['scale']}" / f"{v}_LRbicx{cfg['scale']}"
    return main_for_infer.main(["--model_name", cfg["model_name"], "--checkpoint", cfg["checkpoint"],
                                "--test_folder", str(folder), "--scale", str(cfg["scale"])])


def _die_with_parent() -> None:
    """With ``DTKD_PARENT_PID`` set (the study runner sets it), get SIGTERM when that process dies, so a
    killed runner leaves no orphan training (SIGTERM saves ``latest.pth`` and stops). Linux only."""
    parent = os.environ.get("DTKD_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    # under torchrun our parent is its agent (a child of DTKD_PARENT_PID): the signal then follows the agent
    expected = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else int(parent)
    if os.getppid() != expected or os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Optional[Sequence[str]] = None) -> int:
    _die_with_parent()
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not cfg["Train"]:
        return _validate_only(cfg)
    from Trainer import Trainer, TrainingError
    from Utils.checkpoint import CheckpointError
    from Utils.image_io import ImageError
    from Utils.losses import PerceptualWeightsError

    trainer = None
    try:
        trainer = Trainer(cfg)
        result = trainer.fit()
        if trainer.is_main:
            log.info("done: %s (final weights: %s)%s", trainer.exp_dir, trainer.exp_dir / "weights" / "final.pth",
                     f"; last validation PSNR {result['psnr']:.4f}" if result else "")
        return 0
    except (TrainingError, CheckpointError, ImageError, PerceptualWeightsError, ValueError, KeyError) as exc:
        log.error("%s", exc.args[0] if isinstance(exc, KeyError) else exc)
        return 1
    except KeyboardInterrupt as exc:
        log.warning("%s", exc or "interrupted")
        return 130
    finally:
        if trainer is not None:
            trainer.close()


if __name__ == "__main__":
    sys.exit(main())
