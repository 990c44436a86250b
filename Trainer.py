"""The training loop: iteration-bounded, exactly resumable, DDP-ready, with per-term loss logging.

One :class:`Trainer` serves every mode: plain training on ground truth (students, baselines and
the fidelity teacher), EdgeSRN's edge-guided training, DTKD distillation and the KD baselines
(``--kd_method``). A mode is an *objective* (see :mod:`Utils.objectives`): it turns (SR, batch) into
named, weighted loss terms; an objective with learned parts (FitNet's adapters) has them optimised
with the student and saved in the checkpoints (``objective``).

Files in ``<experiments_root>/<name>/``: ``config.yaml``, ``log.csv`` (one row per iteration,
each loss term separately), ``curves.png``, ``checkpoints/latest.pth`` and ``checkpoints/best.pth``
(everything needed to resume exactly), ``weights/final.pth`` and ``weights/best.pth`` (plain
state dicts that ``get_model(..., checkpoint=...)`` loads), and ``weights/iter_<N>.pth`` for each
``--snapshots`` iteration (a run's trajectory, for studies' ``eval_marks``).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import pickle
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from Model import build_model, get_preset
from Utils.checkpoint import atomic_save, load_weights, read_checkpoint, unwrap_model
from Utils.inference import probe_forward

log = logging.getLogger("Trainer")

DETERMINISTIC_LOG_COLUMNS = ("iter", "lr", "total", "nonfinite", "val_psnr", "val_ssim")
TIMING_LOG_COLUMNS = ("imgs_per_s", "elapsed")


class TrainingError(RuntimeError):
    """A problem that stops training, with a one-line message."""


def snapshot_path(exp_dir: Path, iteration: int) -> Path:
    """Where ``--snapshots`` keeps the weights of one iteration: ``<run>/weights/iter_<N>.pth``."""
    return Path(exp_dir) / "weights" / f"iter_{iteration}.pth"


# ----------------------------------------------------------------------------- small pieces

class ModelEMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = unwrap_model(model)
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in src.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), src.buffers()):
            b_ema.copy_(b)


def rng_state() -> dict:
    """RNG states of Python, NumPy and torch (CPU and CUDA) as tensors and plain types, so that a resume
    file loads with ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s states (also the tuple and array form of files made before it)."""
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"])
    random.setstate(py)
    if isinstance(npy, dict):
        npy = {"bit_generator": npy["bit_generator"], "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
               "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]}}
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path: Path) -> dict:
    """A resume file read with ``weights_only=True``. A file made before the RNG states were stored as
    tensors (NumPy's state as an array) loads with NumPy's array types allowed and nothing else; any other
    file that needs arbitrary pickled objects is a one-line :class:`TrainingError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numpy_types = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), multiarray._reconstruct]
    try:
        with torch.serialization.safe_globals(numpy_types):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(exc).__name__)
        raise TrainingError(f"{path}: not a resume file that loads with weights_only=True "
                            f"({why[:200]}); start a new run or resume from a file of this version") from None
    log.info("%s: resume file of the older format (NumPy RNG state as an array); loaded", path)
    return state


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (the field's default, betas 0.9/0.99), AdamW or SGD."""
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


def build_scheduler(name: str, opt: torch.optim.Optimizer, iters: int, step_size: int, gamma: float,
                    milestones: Optional[list[int]], eta_min: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Iteration-based schedules: step, multistep, cosine, or constant."""
    name = name.lower()
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, step_size), gamma=gamma)
    if name == "multistep":
        ms = milestones or [int(iters * f) for f in (0.5, 0.75, 0.9)]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iters), eta_min=eta_min)
    if name in ("none", "constant"):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ValueError(f"unknown scheduler {name!r}; choose step, multistep, cosine or constant")


def _flat_tensors(state, prefix: str = ""):
    """(dotted key, tensor) of every tensor in a nested dict of state dicts."""
    for k, v in state.items():
        if isinstance(v, dict):
            yield from _flat_tensors(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor):
            yield f"{prefix}{k}", v


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """Iteration-bounded training of one preset with one objective; see the module docstring."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self._snapshots = set(cfg.get("snapshots") or ())
        self.rank, self.world, self.local_rank = _dist_info()
        self.is_main = self.rank == 0
        self.distributed = self.world > 1
        use_cuda = torch.cuda.is_available() and not cfg.get("cpu", False)
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if self.distributed and not dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if cfg["batch_size"] % self.world:
            raise TrainingError(f"--batch_size {cfg['batch_size']} is not divisible by {self.world} processes")
        self.exp_dir = Path(cfg["experiments_root"]) / cfg["name"]
        self.iteration = 0
        self.best_psnr = -math.inf
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._stop_signal: Optional[int] = None
        self._seed_everything(cfg["seed"])

        self.preset = get_preset(cfg["model_name"])
        model = build_model(self.preset.name, cfg["scale"])
        if cfg.get("checkpoint"):
            load_weights(model, cfg["checkpoint"], self.preset)
        model.to(self.device)
        self._check_patch_size(model, cfg["patch_size"] // cfg["scale"])
        if cfg.get("channels_last"):
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = ModelEMA(model, cfg["ema"]) if cfg.get("ema", 0) > 0 else None

        from Utils.objectives import build_objective

        self.objective = build_objective(cfg, self.device)
        self.objective.attach_student(model)  # feature methods: hooks on the student, FitNet's adapters
        self.objective_params = list(self.objective.trainable_parameters())
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if self.objective_params:  # learned parts of the objective (FitNet's adapters) train with the student
            groups.append({"params": self.objective_params})
        self.optimizer = build_optimizer(cfg["optimizer"], groups, cfg["lr"], cfg.get("weight_decay", 0.0))
        self.scheduler = build_scheduler(cfg["scheduler"], self.optimizer, cfg["iters"], cfg["lr_step"],
                                         cfg["gamma"], cfg.get("milestones"), cfg.get("eta_min", 0.0))
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.get("amp", "none")]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.train_model: nn.Module = model
        if cfg.get("compile"):
            self.train_model = torch.compile(self.train_model)
        if self.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.local_rank] if use_cuda else None)

        self.log_columns: list[str] = ["iter", "lr", *self.objective.term_names, "total", "nonfinite",
                                       *self.objective.stat_names, "val_psnr", "val_ssim", *TIMING_LOG_COLUMNS]
        self._valid_pairs = None

    # -- set-up helpers ------------------------------------------------------------------------
    def _check_patch_size(self, model: nn.Module, lr_patch: int) -> None:
        """Fail at once, with a message, when the network cannot take LR patches of this size
        (e.g. RFDN's ESA block needs at least 15x15: --patch_size 64 at x4, not 48)."""
        try:
            probe_forward(model, lr_patch)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainingError(f"--patch_size {self.cfg['patch_size']}: {self.preset.name} cannot process "
                                f"{lr_patch}x{lr_patch} LR patches ({first[:160]}); use a larger patch") from None

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def preflight(self) -> None:
        """Fail before training when the experiment folder cannot be written or the disk is nearly full."""
        if not self.is_main:
            return
        try:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            probe = self.exp_dir / ".write_test"
            probe.write_bytes(b"0" * 1024)
            probe.unlink()
        except OSError as exc:
            raise TrainingError(f"{self.exp_dir}: cannot write the experiment folder ({exc.strerror or exc})")
        n_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        need = n_bytes * (8 if self.ema else 6) + (64 << 20)  # latest+best (model, EMA, Adam moments), weights
        free = shutil.disk_usage(self.exp_dir).free
        if free < need:
            raise TrainingError(f"{self.exp_dir}: only {free >> 20} MiB free, checkpoints need about {need >> 20} MiB")

    def _build_data(self):
        from Utils.datasets import build_train_dataset, make_train_loader

        cfg = self.cfg
        if cfg.get("train_hr"):
            hr_dirs, lr_dirs = cfg["train_hr"], cfg.get("train_lr")
        elif cfg.get("root"):
            root = Path(cfg["root"])
            hr_dirs = [root / "DIV2K_train_HR"]
            lr = root / "DIV2K_train_LR_bicubic" / f"X{cfg['scale']}"
            lr_dirs = [lr] if lr.is_dir() else None
        else:
            raise TrainingError("no training data: give --root DIR (DIV2K layout) or --train_hr DIR [DIR ...]")
        ds = build_train_dataset(hr_dirs, lr_dirs, scale=cfg["scale"], patch_size=cfg["patch_size"],
                                 rgb_permute=cfg.get("rgb_permute", False), repeat=cfg.get("repeat", 1),
                                 cache_dir=cfg.get("cache_dir"), seed=cfg["seed"], uint8=True,
                                 progress=self.is_main and not cfg.get("quiet"))
        attach = getattr(self.objective, "attach_dataset", None)
        if attach is not None:  # e.g. DTKD: the auto entropy gate and the teacher-output cache
            if self.is_main:
                attach(ds)
            if self.distributed:
                dist.barrier()  # rank 0 built the teacher cache; the others now reuse it
                if not self.is_main:
                    attach(ds)
        self.dataset = ds
        return make_train_loader(ds, cfg["batch_size"] // self.world, num_workers=cfg["num_workers"],
                                 seed=cfg["seed"], start_iter=self.iteration, rank=self.rank,
                                 world_size=self.world, pin_memory=self.device.type == "cuda")

    def _validation_pairs(self):
        if self._valid_pairs is None:
            from Utils.evaluate import find_gt_folder, pair_images

            cfg = self.cfg
            v = cfg.get("valid_dataset")
            if not v:
                self._valid_pairs = []
                return self._valid_pairs
            p = Path(v)
            if not p.is_dir():
                p = Path(cfg["datasets_root"]) / f"GTmod12_LRx{cfg['scale']}" / f"{v}_LRbicx{cfg['scale']}"
            gt = Path(cfg["valid_gt"]) if cfg.get("valid_gt") else find_gt_folder(p)
            if gt is None:
                raise TrainingError(f"{p}: no ground truth found for validation; pass --valid_gt DIR")
            self._valid_pairs = pair_images(p, gt, cfg["scale"])
        return self._valid_pairs

    # -- checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": unwrap_model(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "iteration": self.iteration,
            "sampler": {"seed": self.cfg["seed"], "position": self.iteration * self.cfg["batch_size"]},
            "best_psnr": self.best_psnr,
            "nonfinite_total": self.nonfinite_total,
            "objective": self._objective_state(),  # None unless the objective learns (FitNet)
            "config": self.cfg,
            "model_name": self.preset.name,
        }

    def _objective_state(self) -> Optional[dict]:
        """The objective's learned parts (any callable objective works: tests wrap it)."""
        learned = getattr(self.objective, "learned_state", None)
        return learned() if learned is not None else None

    def export_weights(self) -> dict:
        """The weights to publish: EMA when enabled, else the model (plain state dict)."""
        return (self.ema.module if self.ema else unwrap_model(self.model)).state_dict()

    def save(self, best: bool = False) -> None:
        if not self.is_main:
            return
        state = self._state()
        atomic_save(state, self.exp_dir / "checkpoints" / "latest.pth")
        if best:
            atomic_save(state, self.exp_dir / "checkpoints" / "best.pth")
            atomic_save(self.export_weights(), self.exp_dir / "weights" / "best.pth")

    def resume(self, path: Path) -> None:
        state = load_resume_state(path)
        if state.get("model_name") != self.preset.name:
            raise TrainingError(f"{path}: checkpoint of {state.get('model_name')}, not {self.preset.name}")
        self._check_schedule(path, state.get("config") or {})
        unwrap_model(self.model).load_state_dict(state["model"], strict=True)
        if self.ema:  # a run that had no EMA yet starts its EMA from the resumed weights, not from the init
            self.ema.module.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"],
                                            strict=True)
        if self._objective_state() is not None:
            if state.get("objective") is None:
                raise TrainingError(f"{path}: the checkpoint holds no state of the objective's learned parts "
                                    f"(made with another --kd_method?)")
            self.objective.load_learned_state(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best_psnr = float(state["best_psnr"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        log.info("resumed from %s at iteration %d (lr %.3g)", path, self.iteration, self.optimizer.param_groups[0]["lr"])

    def _check_schedule(self, path: Path, old: dict) -> None:
        """Resuming restores the optimizer's and the scheduler's state, so schedule flags that differ from
        the checkpoint's config ``old`` would be silently ignored (a milestone already passed never fires):
        refuse; a longer or shorter ``--iters`` is allowed, with a warning."""
        old_iters = old.get("iters")
        if old_iters is not None and old_iters != self.cfg["iters"]:
            log.warning("--iters changed from %d to %d on resume: the learning-rate schedule keeps the "
                        "checkpoint's state (a cosine schedule still ends at %d)", old_iters, self.cfg["iters"],
                        old_iters)
        kind = self.cfg["scheduler"]
        keys = ["scheduler", "lr"] + {"step": ["lr_step", "gamma"], "multistep": ["milestones", "gamma"],
                                      "cosine": ["eta_min"]}.get(kind, [])
        changed = [f"--{k} {self.cfg.get(k)} (checkpoint: {old[k]})" for k in keys
                   if k in old and old[k] != self.cfg.get(k)]
        if changed:
            raise TrainingError(f"{path}: resuming keeps the checkpoint's learning-rate schedule, so "
                                f"{'; '.join(changed)} would be ignored; resume with the checkpoint's values, or "
                                f"start a new run from its weights (--checkpoint, another --name)")

    def _find_resume(self) -> Optional[Path]:
        cfg = self.cfg
        latest = self.exp_dir / "checkpoints" / "latest.pth"
        if cfg.get("resume"):
            p = Path(cfg["resume"])
            if not p.is_file():
                raise TrainingError(f"{p}: --resume checkpoint not found")
            return p
        if latest.is_file():
            if cfg.get("auto_resume"):
                return latest
            raise TrainingError(f"{self.exp_dir}: an experiment with this name exists; pass --auto_resume to "
                                f"continue it or choose another --name")
        return None

    # -- logging -------------------------------------------------------------------------------
    def _open_log(self) -> None:
        """Open log.csv; on resume drop the rows after the resumed iteration (they will be redone)."""
        path = self.exp_dir / "log.csv"
        if self.iteration > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= self.iteration]
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.log_columns)
                w.writeheader()
                w.writerows(rows)
        elif not path.is_file() or self.iteration == 0:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.log_columns).writeheader()
        self._log_file = open(path, "a", newline="")
        self._log_writer = csv.DictWriter(self._log_file, fieldnames=self.log_columns, extrasaction="ignore")

    def _write_log(self, row: dict) -> None:
        self._log_writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._log_file.flush()

    def _tensorboard(self):
        if not self.cfg.get("tensorboard"):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrainingError(f"--tensorboard needs the tensorboard package ({exc}); pip install tensorboard")
        return SummaryWriter(str(self.exp_dir / "tensorboard"))

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> Optional[dict]:
        """PSNR/SSIM on the validation set (rank 0), with the evaluation code of main_for_infer.py."""
        pairs = self._validation_pairs()
        if not pairs:
            return None
        from Utils.evaluate import MetricOptions, evaluate_pairs
        from Utils.inference import super_resolve

        net = self.ema.module if self.ema else unwrap_model(self.model)
        was_training = net.training
        net.eval()
        opts = MetricOptions(scale=self.cfg["scale"], niqe=False, ag=False)
        res = evaluate_pairs(net, pairs, opts, progress=False,
                             sr_fn=lambda x: super_resolve(net, x, self.cfg["scale"], self.preset.pad_multiple,
                                                           amp=self.cfg.get("amp"), half_ok=self.preset.half_ok))
        net.train(was_training)
        if res.failures:
            raise TrainingError(f"validation failed on {res.failures[0][0]}: {res.failures[0][1]}")
        return res.means()

    def plot_curves(self) -> None:
        from Utils.plots import plot_training_curves

        try:
            plot_training_curves(self.exp_dir / "log.csv", self.exp_dir / "curves.png")
        except Exception as exc:  # a plot must never stop training
            log.warning("could not draw curves.png: %s", exc)

    # -- the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum
        log.warning("signal %d received: saving latest.pth after this iteration", signum)

    def _should_stop(self) -> bool:
        """Whether a stop signal arrived; in DDP on any rank, so that all ranks stop together."""
        if not self.distributed:
            return self._stop_signal is not None
        flag = torch.tensor([self._stop_signal or 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # also keeps the ranks in step, as a barrier would
        if flag.item() and self._stop_signal is None:
            self._stop_signal = int(flag.item())
        return bool(flag.item())

    def weights_checksum(self) -> str:
        """SHA-256 of the model's (and the EMA's, and the objective's learned parts') tensors, bit for bit."""
        h = hashlib.sha256()
        states = [unwrap_model(self.model).state_dict()] + ([self.ema.module.state_dict()] if self.ema else [])
        learned = self._objective_state()
        if learned is not None:  # FitNet's adapters: their gradients are averaged by hand, check them too
            states.append({f"objective.{k}": v for k, v in _flat_tensors(learned)})
        for state in states:
            for k, t in state.items():
                h.update(k.encode())
                h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def check_ranks_in_sync(self) -> None:
        """In DDP, make sure every rank ends with bitwise the same weights (TrainingError if not)."""
        if not self.distributed:
            return
        mine = self.weights_checksum()
        sums: list[Optional[str]] = [None] * self.world
        dist.all_gather_object(sums, mine)
        if len(set(sums)) != 1:
            raise TrainingError("ranks out of sync after training: weight checksums "
                                + ", ".join(f"rank {r} {c[:16]}" for r, c in enumerate(sums)))
        if self.is_main:
            log.info("ranks in sync: %s (%d processes)", mine[:16], self.world)

    def train_step(self, batch: dict) -> tuple[Optional[dict[str, float]], dict[str, float]]:
        """One optimisation step; returns (term values or None when skipped as non-finite, stats)."""
        begin_step = getattr(self.objective, "begin_step", None)  # tests may wrap a plain callable
        if begin_step is not None:
            begin_step(self.iteration + 1)  # a term that starts later (--adv_start) knows where the run is
        lr_img = batch["lr"].to(self.device, non_blocking=True).float().div_(255.0)
        hr_img = batch["hr"].to(self.device, non_blocking=True).float().div_(255.0)
        batch = {**batch, "lr": lr_img, "hr": hr_img}
        for k, v in list(batch.items()):
            if k not in ("lr", "hr") and isinstance(v, torch.Tensor) and v.dtype == torch.uint8:
                batch[k] = v.to(self.device, non_blocking=True).float().div_(255.0)
        if self.cfg.get("channels_last"):
            lr_img = lr_img.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            sr = self.train_model(lr_img)
            terms, stats = self.objective(sr.float(), batch)
        total = torch.stack(list(terms.values())).sum()
        packed = torch.stack([total.detach(), *[t.detach() for t in terms.values()]]).float()
        n_terms = len(terms) + 1
        stat_names = list(stats)
        if stat_names:  # fetched with the losses: still one host sync per step
            packed = torch.cat([packed, torch.stack([torch.as_tensor(stats[k], device=packed.device).float()
                                                     for k in stat_names])])
        if self.distributed:  # the log shows the mean over the ranks (the global batch); a non-finite
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)  # loss on any rank makes the sum non-finite,
            packed /= self.world  # so every rank skips together (else DDP's gradient all-reduce would hang)
        finite = torch.isfinite(packed[:n_terms]).all()
        values = packed.cpu().tolist()  # the one host sync of a step (the log needs the values)
        stats = dict(zip(stat_names, values[n_terms:]))
        values = values[:n_terms]
        if not bool(finite.item()):
            self.optimizer.zero_grad(set_to_none=True)
            return None, stats
        self.scaler.scale(total).backward()
        if self.distributed and self.objective_params:  # not in DDP: average their gradients by hand
            for p in self.objective_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad /= self.world
        if self.cfg.get("grad_clip", 0) > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([*self.model.parameters(), *self.objective_params], self.cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        critic_step = getattr(self.objective, "critic_step", None)  # tests may wrap a plain callable
        if critic_step is not None:
            critic_step()  # the adversarial term's discriminator, on this step's detached outputs
        out = dict(zip(terms.keys(), values[1:]))
        out["total"] = values[0]
        return out, stats

    def fit(self) -> dict:
        """Run to ``iters``; returns the last validation result (if any)."""
        from tqdm import tqdm

        cfg = self.cfg
        resume_path, error = None, None
        if self.is_main:
            try:
                resume_path = self._find_resume()
                self.preflight()
            except TrainingError as exc:
                error = str(exc)
        if self.distributed:  # every rank learns rank 0's decision, or the others would wait forever
            holder = [str(resume_path) if resume_path else None, error]
            dist.broadcast_object_list(holder, src=0)
            resume_path = Path(holder[0]) if holder[0] else None
            error = holder[1]
        if error:
            raise TrainingError(error)
        if resume_path is not None:
            self.resume(resume_path)
        if self.is_main:
            import yaml

            self.exp_dir.mkdir(parents=True, exist_ok=True)
            (self.exp_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
            self._open_log()
        tb = self._tensorboard() if self.is_main else None
        loader = self._build_data()
        batches = iter(loader)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        last_val: dict = {}
        bar = tqdm(total=cfg["iters"], initial=self.iteration, disable=not self.is_main or cfg.get("quiet"),
                   desc=cfg["name"], dynamic_ncols=True)
        t_start = time.perf_counter()
        kill_at = int(os.environ.get("DTKD_TEST_KILL_AT_ITER", "0"))  # tests: a real SIGKILL mid-run
        try:
            while self.iteration < cfg["iters"]:
                t0 = time.perf_counter()
                batch = next(batches)
                if kill_at and self.iteration + 1 == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                values, stats = self.train_step(batch)
                self.iteration += 1
                self.scheduler.step()
                row: dict[str, Any] = {"iter": self.iteration, "lr": self.optimizer.param_groups[0]["lr"]}
                if values is None:
                    self.nonfinite_in_a_row += 1
                    self.nonfinite_total += 1
                    log.warning("iteration %d: non-finite loss, step skipped (%d in a row)",
                                self.iteration, self.nonfinite_in_a_row)
                else:
                    self.nonfinite_in_a_row = 0
                    row.update(values)
                row["nonfinite"] = self.nonfinite_total
                row.update(stats)
                stop_nonfinite = values is None and self.nonfinite_in_a_row >= cfg["max_nonfinite"]
                validate_now = cfg["test_every"] > 0 and (self.iteration % cfg["test_every"] == 0
                                                          or self.iteration == cfg["iters"])
                save_now = (self.iteration % cfg["save_every"] == 0 or validate_now
                            or self.iteration == cfg["iters"] or stop_nonfinite)
                improved = False
                if validate_now and self.is_main:
                    res = self.validate()
                    if res:
                        last_val = res
                        row["val_psnr"], row["val_ssim"] = res.get("psnr"), res.get("ssim")
                        improved = res["psnr"] > self.best_psnr
                        if improved:
                            self.best_psnr = res["psnr"]
                        log.info("iter %d: val PSNR %.4f SSIM %.4f (best %.4f)", self.iteration, res["psnr"],
                                 res["ssim"], self.best_psnr)
                # The row is written before the checkpoint: a crash between the two leaves a row past
                # latest.pth, which the resume drops and redoes (the other order would lose the row).
                if self.is_main:
                    dt = time.perf_counter() - t0
                    row["imgs_per_s"] = cfg["batch_size"] / dt if dt > 0 else float("nan")
                    row["elapsed"] = time.perf_counter() - t_start
                    self._write_log(row)
                    if validate_now:
                        self.plot_curves()
                    if tb is not None:
                        for k, v in row.items():
                            if isinstance(v, float) and k != "iter":
                                tb.add_scalar(k, v, self.iteration)
                    bar.set_postfix({k: f"{row[k]:.4g}" for k in ["total", *self.objective.term_names[:3]]
                                     if isinstance(row.get(k), float)})
                    bar.update(1)
                if self.iteration in self._snapshots and self.is_main:
                    # before latest.pth: a run resumed past this iteration always has its snapshot
                    atomic_save(self.export_weights(), snapshot_path(self.exp_dir, self.iteration))
                if save_now:
                    self.save(best=improved)
                if stop_nonfinite:
                    raise TrainingError(f"{self.nonfinite_in_a_row} non-finite losses in a row at iteration "
                                        f"{self.iteration}; stopping (latest.pth saved; lower --lr or use "
                                        f"--grad_clip)")
                if self._should_stop():
                    if not save_now:
                        self.save()
                    raise KeyboardInterrupt(f"stopped by signal {self._stop_signal} at iteration {self.iteration}; "
                                            f"latest.pth saved")
            self.check_ranks_in_sync()
            if self.is_main:
                atomic_save(self.export_weights(), self.exp_dir / "weights" / "final.pth")
                if not (self.exp_dir / "weights" / "best.pth").exists():
                    atomic_save(self.export_weights(), self.exp_dir / "weights" / "best.pth")
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.is_main and hasattr(self, "_log_file"):
                self._log_file.close()
            if tb is not None:
                tb.close()
        return last_val

    def close(self) -> None:
        """Tear the process group down once every rank is done (rank 0 may still be writing files:
        a rank that destroys its gloo context early can abort on exit)."""
        if self.distributed and dist.is_initialized():
            try:
                dist.barrier()
            except Exception as exc:  # a rank already failed: nothing left to wait for
                log.debug("barrier before teardown failed: %s", exc)
            # DDP's reducer keeps gloo work objects (holding tensors) alive; release them while the
            # interpreter is fully alive, or gloo's threads can abort the process at exit.
            import gc

            self.train_model = self.model
            gc.collect()
            dist.destroy_process_group()
