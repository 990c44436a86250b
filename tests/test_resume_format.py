"""Resume files load with torch.load(weights_only=True); a file of the older format (RNG states as a Python
tuple and a NumPy array) still resumes bitwise exactly; a file needing other pickled objects fails in one line."""
from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

from tests.test_trainer import _assert_same_tensors, _env, _explain, _run_main, _train_args, data  # noqa: F401
from Trainer import TrainingError, load_resume_state


def _old_format(rng: dict) -> dict:
    """The RNG states as files made before the change held them."""
    py, npy = rng["python"], rng["numpy"]
    return {"python": (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]),
            "numpy": (npy["bit_generator"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                      npy["gauss"]),
            "torch": rng["torch"]}


def test_old_format_resume_file_resumes_exactly(tmp_path, data):  # noqa: F811
    ref = _run_main(_train_args(tmp_path, "ref", iters=4, valid=False, extra=("--quiet",)))
    assert ref.returncode == 0, _explain(ref)
    args = _train_args(tmp_path, "run", iters=4, valid=False, extra=("--quiet",))
    killed = _run_main(args, env=_env(DTKD_TEST_KILL_AT_ITER="4"))
    assert killed.returncode == -signal.SIGKILL, _explain(killed)
    latest = tmp_path / "run" / "checkpoints" / "latest.pth"
    state = torch.load(latest, map_location="cpu", weights_only=True)  # the new format: plain types and tensors
    assert state["iteration"] == 2 and isinstance(state["rng"]["numpy"]["key"], torch.Tensor)
    state["rng"] = _old_format(state["rng"])
    torch.save(state, latest)
    with pytest.raises(Exception):
        torch.load(latest, map_location="cpu", weights_only=True)  # really the old, unsafe-by-default format
    resumed = _run_main(args + ["--auto_resume"])
    assert resumed.returncode == 0 and "older format" in resumed.stderr, _explain(resumed)
    _assert_same_tensors(torch.load(tmp_path / "run" / "weights" / "final.pth", weights_only=True),
                         torch.load(tmp_path / "ref" / "weights" / "final.pth", weights_only=True), "final.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_file_needing_other_objects_fails_in_one_line(tmp_path, capsys):
    path = tmp_path / "latest.pth"
    torch.save({"iteration": 3, "payload": _Payload()}, path)
    with pytest.raises(TrainingError) as info:
        load_resume_state(path)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg and "weights_only=True" in msg, msg
    assert "code ran" not in capsys.readouterr().out
