"""The objective interface every training mode implements (re-exported by :mod:`Utils.objectives`).

An objective is called with the student's SR output and the batch (``lr``, ``hr`` and any extra
targets, all float in [0, 1] on the device) and returns ``(terms, stats)``: ``terms`` maps a name to
an already weighted scalar tensor (their sum is the loss; each is logged separately), ``stats`` maps
a name to a float for the log (e.g. the fraction of samples routed to each teacher).

It lives in its own module so that the method modules import it without importing the registry
(``Utils/objectives/__init__.py``), which imports them: the import graph stays acyclic.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class Objective(nn.Module):
    """Base class: ``term_names`` and ``stat_names`` fix the log's columns for the whole run.

    Optional hooks the trainer calls: ``attach_student(model)`` once, with the (unwrapped) student,
    before the optimizer is built (feature methods register forward hooks there, FitNet builds its
    adapters); ``attach_dataset(dataset)`` with the training set (DTKD's auto gate, teacher caches).
    Learned parts of an objective (FitNet's adapters) are its ``trainable_parameters()``: the trainer
    optimises them with the student and saves ``learned_state()`` in its checkpoints. A part with an
    objective of its own (the adversarial term's discriminator) is updated in ``critic_step()``, which
    the trainer calls after each optimizer step of the student that was not skipped; ``begin_step(i)``
    is called before step i (1-based), for a term that switches on at a given iteration.
    """

    term_names: tuple[str, ...] = ()
    stat_names: tuple[str, ...] = ()
    reads_teacher_cache = False  # True: teacher outputs may come from --teacher_cache (a study shares one)

    def forward(self, sr: torch.Tensor, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def attach_student(self, model: nn.Module) -> None:
        """Called once with the unwrapped student (no DDP, no compile) before the optimizer is built."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters learned with the student (none for most objectives)."""
        return []

    def begin_step(self, iteration: int) -> None:
        """Called before each training step with its 1-based number (a term that starts later); no-op."""

    def critic_step(self) -> None:
        """Update parts that learn against the student (a discriminator) after its step; none by default."""

    def learned_state(self) -> Optional[dict]:
        """State dict of the learned parts for checkpoints (None: nothing learned)."""
        return None

    def load_learned_state(self, state: dict) -> None:
        raise ValueError(f"{type(self).__name__} has no learned state to restore")
