"""The training loop end to end: exact resume after SIGKILL, DDP on CPU, exported weights, AMP and
channels-last on CPU, faults (non-finite losses, SIGTERM, existing or unwritable experiments, config).

Most tests run ``main.py`` as a real subprocess on tiny settings (RFDN, 64x64 HR patches, batch 4,
T91 from ../shared/data); they skip with a reason when the shared data is absent. Subprocesses use
one intra-op thread: on a 2-core machine shared with other jobs, two OpenMP threads per process are
several times slower, and a fixed thread count keeps the CPU arithmetic bitwise reproducible.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import BENCHMARK, REPO, SHARED_DATA, need

T91 = SHARED_DATA / "train" / "T91"
SET5 = BENCHMARK / "Set5"
SET5_LR = SET5 / "LR_bicubic" / "X4"
DETERMINISTIC = ("iter", "lr", "l1", "total", "nonfinite", "val_psnr", "val_ssim")


# ----------------------------------------------------------------------------- helpers

def _env(**extra: str) -> dict:
    env = os.environ.copy()
    env.pop("DTKD_TEST_KILL_AT_ITER", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # main_for_infer measures NIQE with the shipped parameters; never let it try a download in a test
    env.setdefault("DTKD_NIQE_PARAMS", str(REPO / "Utils" / "assets" / "niqe_pris_params.npz"))
    env.update(extra)
    return env


def _train_args(root: Path, name: str, *, iters: int = 8, workers: int = 0, valid: bool = True,
                extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--model_name", "RFDN", "--patch_size", "64", "--batch_size", "4", "--iters", str(iters),
            "--save_every", "2", "--num_workers", str(workers),
            "--train_hr", str(T91 / "HR"), "--train_lr", str(T91 / "LR_bicubic" / "X4"),
            "--experiments_root", str(root), "--cache_dir", str(root / "cache"), "--name", name]
    if valid:
        args += ["--valid_dataset", str(SET5_LR), "--test_every", "4"]
    else:
        args += ["--valid_dataset", "", "--test_every", "0"]
    return args + list(extra)


def _run_main(args: list[str], *, env: dict | None = None, cwd: Path = REPO, timeout: float = 300,
              launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, str(REPO / "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _rows(exp: Path) -> list[dict]:
    with open(exp / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tensors(obj, prefix: str = ""):
    """(path, tensor) for every tensor in a nested checkpoint object."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _assert_same_tensors(a, b, what: str) -> None:
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys(), f"{what}: different keys"
    assert ta, f"{what}: no tensors"
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{what}: {len(differ)} of {len(ta)} tensors differ, e.g. {differ[:5]}"


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data():
    need(T91 / "HR")
    need(T91 / "LR_bicubic" / "X4")
    need(SET5 / "HR")
    need(SET5_LR)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data):
    """An uninterrupted 8-iteration run (EMA, validation at 4 and 8, single-process loading)."""
    root = tmp_path_factory.mktemp("reference")
    proc = _run_main(_train_args(root, "run", workers=0, extra=("--ema", "0.9")))
    assert proc.returncode == 0, _explain(proc)
    return root / "run", proc


@pytest.fixture
def one_thread():
    """In-process training with one thread (as the subprocesses): fast under load, reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- 1. exact resume

def test_sigkill_then_auto_resume_is_bitwise_identical(tmp_path, reference_run):
    ref, _ = reference_run
    root = tmp_path / "exp"
    exp = root / "run"
    args = _train_args(root, "run", workers=2, extra=("--ema", "0.9"))
    # Killed right before iteration 6: latest.pth holds iteration 4 (saved and validated),
    # row 5 is in log.csv but was never saved, so the resume must drop it and redo it.
    killed = _run_main(args, env=_env(DTKD_TEST_KILL_AT_ITER="6"))
    assert killed.returncode == -signal.SIGKILL, _explain(killed)
    assert _load(exp / "checkpoints" / "latest.pth")["iteration"] == 4
    assert [int(r["iter"]) for r in _rows(exp)] == [1, 2, 3, 4, 5]
    assert not (exp / "weights" / "final.pth").exists()

    resumed = _run_main(args + ["--auto_resume"])
    assert resumed.returncode == 0, _explain(resumed)
    assert "at iteration 4" in resumed.stderr and "resumed from" in resumed.stderr, _explain(resumed)

    rows, ref_rows = _rows(exp), _rows(ref)
    assert [int(r["iter"]) for r in rows] == list(range(1, 9)), "rows missing or repeated after the resume"
    assert [{k: r[k] for k in DETERMINISTIC} for r in rows] == [{k: r[k] for k in DETERMINISTIC} for r in ref_rows]
    assert rows[3]["val_psnr"] and rows[7]["val_psnr"], "validation rows are part of the comparison"

    _assert_same_tensors(_load(exp / "weights" / "final.pth"), _load(ref / "weights" / "final.pth"), "final.pth")
    _assert_same_tensors(_load(exp / "weights" / "best.pth"), _load(ref / "weights" / "best.pth"), "best.pth")
    a, b = _load(exp / "checkpoints" / "latest.pth"), _load(ref / "checkpoints" / "latest.pth")
    for key in ("model", "ema", "optimizer"):
        _assert_same_tensors(a[key], b[key], f"latest.pth[{key}]")
    assert a["scheduler"] == b["scheduler"] and a["iteration"] == b["iteration"] == 8
    assert a["best_psnr"] == b["best_psnr"]


# ----------------------------------------------------------------------------- 3. outputs

def test_run_outputs_and_exported_weights_reproduce_logged_psnr(tmp_path, reference_run, one_thread):
    exp, proc = reference_run
    for rel in ("log.csv", "curves.png", "config.yaml", "checkpoints/latest.pth", "checkpoints/best.pth",
                "weights/final.pth", "weights/best.pth"):
        assert (exp / rel).is_file() and (exp / rel).stat().st_size > 0, rel
    assert "8/8" in proc.stderr, "no progress bar on stderr"
    assert (exp / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import yaml

    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    assert cfg["model_name"] == "RFDN" and cfg["iters"] == 8 and cfg["ema"] == 0.9

    rows = _rows(exp)
    val = {int(r["iter"]): float(r["val_psnr"]) for r in rows if r["val_psnr"]}
    assert sorted(val) == [4, 8]
    best_iter = max(val, key=lambda k: val[k])

    from Model import get_model
    from Utils.evaluate import MetricOptions, evaluate_pairs, find_gt_folder, pair_images

    pairs = pair_images(SET5_LR, find_gt_folder(SET5_LR), 4)
    for weights, expected in (("best.pth", val[best_iter]), ("final.pth", val[8])):
        net = get_model("RFDN", 4, checkpoint=exp / "weights" / weights)
        res = evaluate_pairs(net, pairs, MetricOptions(scale=4, niqe=False, ag=False), progress=False)
        assert not res.failures
        assert round(res.means()["psnr"], 4) == pytest.approx(round(expected, 4), abs=1.01e-4), weights

    # The seed's evaluation command line, through main.py
    ev = _run_main(["--Train", "False", "--model_name", "RFDN", "--checkpoint", str(exp / "weights" / "final.pth"),
                    "--valid_dataset", str(SET5_LR)], cwd=tmp_path)
    assert ev.returncode == 0, _explain(ev)
    import re

    m = re.search(r"PSNR (\d+\.\d{4})", ev.stderr + ev.stdout)
    assert m, _explain(ev)
    assert float(m.group(1)) == pytest.approx(val[8], abs=1.01e-4)


def test_curves_png_plots_log(tmp_path):
    from Utils.plots import plot_training_curves

    log_csv = tmp_path / "log.csv"
    log_csv.write_text("iter,lr,l1,total,nonfinite,val_psnr,val_ssim,imgs_per_s,elapsed\n"
                       "1,0.001,0.5,0.5,0,,,1,1\n2,0.001,,,1,,,1,2\n3,0.001,0.3,0.3,1,20.5,0.6,1,3\n")
    out = plot_training_curves(log_csv, tmp_path / "curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty.csv").write_text("iter,lr,l1\n")
    with pytest.raises(ValueError, match="no rows"):
        plot_training_curves(tmp_path / "empty.csv", tmp_path / "e.png")


# ----------------------------------------------------------------------------- 2. DDP

def test_torchrun_two_processes_stay_in_sync_and_write_one_set_of_files(tmp_path, data, one_thread):
    root = tmp_path / "exp"
    args = _train_args(root, "ddp", iters=4, extra=("--quiet",))
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()))
    proc = _run_main(args, launcher=launcher, env=_env(OMP_NUM_THREADS="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, _explain(proc)
    assert "ranks in sync:" in out, _explain(proc)
    assert out.count("ranks in sync:") == 1, "only rank 0 reports"
    exp = root / "ddp"
    rows = _rows(exp)
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4]
    assert rows[3]["val_psnr"]
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["best.pth", "latest.pth"]
    assert sorted(p.name for p in (exp / "weights").iterdir()) == ["best.pth", "final.pth"]
    assert sorted(p.name for p in exp.iterdir()) == ["checkpoints", "config.yaml", "curves.png", "log.csv",
                                                     "weights"]
    assert _load(exp / "checkpoints" / "latest.pth")["iteration"] == 4

    # Two ranks of 2 samples see the same 4 samples per step as one process of 4 (rank r takes the
    # stream positions r, r+2, ...) and average their gradients: the same training up to rounding.
    import main

    assert main.main(_train_args(root, "single", iters=4, valid=False, extra=("--quiet",))) == 0
    single, ddp = _load(root / "single" / "weights" / "final.pth"), _load(exp / "weights" / "final.pth")
    worst = max((single[k] - ddp[k]).abs().max().item() for k in single)
    assert worst < 1e-4, f"DDP and single-process weights differ by up to {worst:.3g}"
    for a, b in zip(_rows(root / "single"), rows):  # the log shows the loss of the global batch
        assert float(a["l1"]) == pytest.approx(float(b["l1"]), rel=1e-4), (a, b)


# ----------------------------------------------------------------------------- 4. AMP, channels-last

@pytest.fixture(scope="module")
def fp32_rows(tmp_path_factory, data):
    import main

    root = tmp_path_factory.mktemp("fp32")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main.main(_train_args(root, "run", iters=3, valid=False, extra=("--quiet", "--cpu"))) == 0
    finally:
        torch.set_num_threads(n)
    return _rows(root / "run")


@pytest.mark.parametrize("flags", [("--amp", "bf16"), ("--channels_last",), ("--amp", "bf16", "--channels_last")],
                         ids=["bf16", "channels_last", "bf16+channels_last"])
def test_amp_bf16_and_channels_last_train_on_cpu(tmp_path, fp32_rows, one_thread, flags):
    import main

    rc = main.main(_train_args(tmp_path, "run", iters=3, valid=False, extra=("--quiet", "--cpu", *flags)))
    assert rc == 0
    rows = _rows(tmp_path / "run")
    assert [int(r["iter"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["total"])) and r["nonfinite"] == "0" for r in rows)
    # the first loss (same initial weights, same batch): bf16 autocast rounds, channels-last does not
    first, ref = float(rows[0]["total"]), float(fp32_rows[0]["total"])
    if "bf16" in flags:
        assert first != ref and first == pytest.approx(ref, rel=0.05), (first, ref)
    else:
        assert first == pytest.approx(ref, rel=1e-5)
    sd = torch.load(tmp_path / "run" / "weights" / "final.pth", weights_only=True)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())


# ----------------------------------------------------------------------------- 5. faults

def _cfg(tmp_path: Path, *extra: str, iters: int = 5) -> dict:
    import main

    return main.parse_config(_train_args(tmp_path, "run", iters=iters, valid=False, extra=("--quiet", *extra)))


class _NaNAt:
    """Wraps an objective: returns NaN terms on the given (1-based) calls; records the weights there."""

    def __init__(self, inner, trainer, bad_calls):
        self.inner, self.trainer, self.bad = inner, trainer, set(bad_calls)
        self.term_names, self.stat_names = inner.term_names, inner.stat_names
        self.calls = 0
        self.snapshots = {}

    def __call__(self, sr, batch):
        self.calls += 1
        self.snapshots[self.calls] = [p.detach().clone() for p in self.trainer.model.parameters()]
        terms, stats = self.inner(sr, batch)
        if self.calls in self.bad:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms, stats


def test_nonfinite_loss_skips_the_step_and_is_counted(tmp_path, data, one_thread, caplog):
    from Trainer import Trainer

    trainer = Trainer(_cfg(tmp_path, iters=5))
    obj = trainer.objective = _NaNAt(trainer.objective, trainer, bad_calls={2})
    with caplog.at_level(logging.WARNING, logger="Trainer"):
        trainer.fit()
    trainer.close()
    assert "iteration 2: non-finite loss, step skipped" in caplog.text
    rows = _rows(tmp_path / "run")
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["nonfinite"] for r in rows] == ["0", "1", "1", "1", "1"]
    assert rows[1]["total"] == "" and rows[1]["l1"] == ""
    assert all(math.isfinite(float(r["total"])) for i, r in enumerate(rows) if i != 1)
    # the skipped step left the weights alone; the others changed them
    assert all(torch.equal(a, b) for a, b in zip(obj.snapshots[2], obj.snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(obj.snapshots[3], obj.snapshots[4]))
    assert _load(tmp_path / "run" / "checkpoints" / "latest.pth")["nonfinite_total"] == 1


def test_too_many_nonfinite_losses_in_a_row_stop_the_run(tmp_path, data, one_thread, caplog):
    import main

    # lr 1e30: the first step throws the weights to ~1e30 and every later loss is inf/NaN
    argv = _train_args(tmp_path, "run", iters=20, valid=False,
                       extra=("--quiet", "--lr", "1e30", "--scheduler", "constant", "--max_nonfinite", "3"))
    with caplog.at_level(logging.INFO):
        rc = main.main(argv)
    assert rc == 1
    assert "3 non-finite losses in a row at iteration 4" in caplog.text, caplog.text
    rows = _rows(tmp_path / "run")
    assert [r["nonfinite"] for r in rows] == ["0", "1", "2", "3"]
    assert _load(tmp_path / "run" / "checkpoints" / "latest.pth")["iteration"] == 4
    assert not (tmp_path / "run" / "weights" / "final.pth").exists()


def test_sigterm_saves_latest_exits_130_and_auto_resume_continues(tmp_path, data):
    root = tmp_path / "exp"
    exp = root / "run"
    args = _train_args(root, "run", iters=10_000, valid=False, extra=("--scheduler", "constant", "--quiet"))
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (exp / "checkpoints" / "latest.pth").exists():
            assert proc.poll() is None, _explain(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                                             *proc.communicate()))
            assert time.monotonic() < deadline, "no latest.pth after 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "stopped by signal 15" in err and "latest.pth saved" in err, err[-3000:]
    stopped_at = _load(exp / "checkpoints" / "latest.pth")["iteration"]
    assert 2 <= stopped_at < 10_000
    assert [int(r["iter"]) for r in _rows(exp)] == list(range(1, stopped_at + 1))

    # continue it (to 2 more iterations, so the test stays short)
    cont = _run_main(_train_args(root, "run", iters=stopped_at + 2, valid=False,
                                 extra=("--scheduler", "constant", "--quiet", "--auto_resume")))
    assert cont.returncode == 0, _explain(cont)
    assert f"at iteration {stopped_at}" in cont.stderr
    assert [int(r["iter"]) for r in _rows(exp)] == list(range(1, stopped_at + 3))
    assert (exp / "weights" / "final.pth").is_file()


def test_existing_experiment_without_auto_resume_is_refused(tmp_path, data, one_thread, caplog):
    import main

    argv = _train_args(tmp_path, "run", iters=2, valid=False, extra=("--quiet",))
    assert main.main(argv) == 0
    before = (tmp_path / "run" / "log.csv").read_text()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main.main(argv) == 1
    assert str(tmp_path / "run") in caplog.text and "--auto_resume" in caplog.text, caplog.text
    assert (tmp_path / "run" / "log.csv").read_text() == before, "the refused run touched the log"


def test_unwritable_experiments_root_fails_before_training(tmp_path, data, caplog):
    import main

    (tmp_path / "afile").write_text("a regular file, not a folder")
    root = tmp_path / "afile" / "x"
    t0 = time.perf_counter()
    with caplog.at_level(logging.ERROR):
        rc = main.main(_train_args(root, "run", iters=1000, valid=False, extra=("--quiet",)))
    assert rc == 1
    assert str(root / "run") in caplog.text and "cannot write" in caplog.text, caplog.text
    assert time.perf_counter() - t0 < 60


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder anyway")
def test_read_only_experiments_root_fails_before_training(tmp_path, data, caplog):
    import main

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with caplog.at_level(logging.ERROR):
            rc = main.main(_train_args(ro, "run", iters=1000, valid=False,
                                       extra=("--quiet", "--cache_dir", str(tmp_path / "cache"))))
    finally:
        ro.chmod(0o700)
    assert rc == 1 and "cannot write" in caplog.text


def test_too_small_patch_for_the_network_is_a_clear_error(tmp_path, data, one_thread, caplog):
    import main

    with caplog.at_level(logging.ERROR):
        rc = main.main(_train_args(tmp_path, "run", iters=2, valid=False, extra=("--quiet", "--patch_size", "48")))
    assert rc == 1
    assert "--patch_size 48: RFDN cannot process 12x12 LR patches" in caplog.text, caplog.text


def test_ema_switched_on_at_resume_starts_from_the_resumed_weights(tmp_path, data, one_thread):
    import shutil

    import main

    exp = tmp_path / "run"
    assert main.main(_train_args(tmp_path, "run", iters=2, valid=False, extra=("--quiet",))) == 0
    shutil.copy(exp / "checkpoints" / "latest.pth", tmp_path / "at2.pth")
    assert main.main(_train_args(tmp_path, "run", iters=3, valid=False,
                                 extra=("--quiet", "--auto_resume", "--ema", "0.9"))) == 0
    m2 = _load(tmp_path / "at2.pth")["model"]
    m3 = _load(exp / "checkpoints" / "latest.pth")["model"]
    ema = _load(exp / "weights" / "final.pth")
    for k in m2:  # one EMA update from the resumed weights: m2 + 0.1 (m3 - m2)
        assert torch.allclose(ema[k], m2[k] + 0.1 * (m3[k] - m2[k]), atol=1e-6), k


def test_resume_with_another_schedule_is_refused_before_touching_the_run(tmp_path, data, one_thread, caplog):
    import main

    sched = ("--quiet", "--scheduler", "multistep", "--gamma", "0.1")
    assert main.main(_train_args(tmp_path, "run", iters=2, valid=False, extra=(*sched, "--milestones", "3"))) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pth"
    before = ckpt.read_bytes(), (tmp_path / "run" / "log.csv").read_text()
    caplog.clear()
    with caplog.at_level(logging.ERROR):  # milestone 2 is already counted: it would never fire
        rc = main.main(_train_args(tmp_path, "run", iters=4, valid=False,
                                   extra=(*sched, "--milestones", "2", "--auto_resume", "--lr", "1e-4")))
    assert rc == 1
    assert "--milestones [2] (checkpoint: [3])" in caplog.text and "--lr 0.0001 (checkpoint: 0.0005)" in caplog.text, \
        caplog.text
    assert (ckpt.read_bytes(), (tmp_path / "run" / "log.csv").read_text()) == before
    # the same schedule with a longer --iters resumes, and the checkpoint's milestone fires
    assert main.main(_train_args(tmp_path, "run", iters=4, valid=False,
                                 extra=(*sched, "--milestones", "3", "--auto_resume"))) == 0
    # log.csv's lr is the one after that iteration's scheduler step: milestone 3 shows from row 3 on
    assert [float(r["lr"]) for r in _rows(tmp_path / "run")] == pytest.approx([5e-4, 5e-4, 5e-5, 5e-5])


def test_config_yaml_sets_defaults_and_rejects_unknown_keys(tmp_path, capsys):
    import yaml

    import main

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"model_name": "PAN", "iters": 7, "lr": 1e-3, "ema": 0.5,
                                        "train_hr": ["a", "b"], "train_lr": ["c", "d"]}))
    cfg = main.parse_config(["--config", str(cfg_file), "--lr", "2e-3"])
    assert cfg["model_name"] == "PAN" and cfg["iters"] == 7 and cfg["ema"] == 0.5
    assert cfg["lr"] == 2e-3, "the command line overrides the file"
    assert cfg["train_hr"] == ["a", "b"]

    # the config.yaml a run writes reads back as the same configuration
    written = tmp_path / "written.yaml"
    written.write_text(yaml.safe_dump(cfg, sort_keys=True))
    again = main.parse_config(["--config", str(written)])
    assert {k: v for k, v in again.items() if k != "config"} == {k: v for k, v in cfg.items() if k != "config"}

    bad = tmp_path / "bad.yaml"
    bad.write_text("iters: 5\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit) as exc:
        main.parse_config(["--config", str(bad)])
    assert exc.value.code == 2
    assert "learning_rate" in capsys.readouterr().err

    for flag in ("--save_every", "--iters", "--batch_size"):
        with pytest.raises(SystemExit) as exc:
            main.parse_config([flag, "0"])
        assert exc.value.code == 2 and f"{flag} must be at least 1" in capsys.readouterr().err

    # and through the real command line
    proc = _run_main(["--config", str(bad)])
    assert proc.returncode == 2 and "unknown key(s) learning_rate" in proc.stderr


# ----------------------------------------------------------------------------- 6. does it learn?

def test_rfdn_300_iterations_on_t91_beat_bicubic_on_set5(tmp_path, data):
    """The real thing, small: RFDN from scratch, 300 iterations of 8 64x64 patches (about 40-50 s on
    one core); bench/train_t91_rfdn.py runs the same with batch 16 (see its docstring)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_t91_rfdn.py"), "--batch_size", "8",
                           "--experiments_root", str(tmp_path), "--csv", str(tmp_path / "result.csv")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, _explain(proc)
    with open(tmp_path / "result.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["bicubic_psnr"]) == pytest.approx(28.43, abs=0.01)
    assert float(row["set5_psnr"]) > float(row["bicubic_psnr"]) + 0.2, row
