"""Knowledge distillation (Hinton et al. 2015) to recover the accuracy a compressed model lost.

::

    distiller = slimops.distill.Distiller(teacher=dense_model, student=pruned_model, temperature=4, alpha=0.5)
    for x, y in batches:
        distiller.step(optimizer, x, y)   # or: loss = distiller.loss(x, y); loss.backward(); ...
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_temperature_alpha(temperature, alpha, who: str) -> tuple[float, float]:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"{who}: temperature must be a positive finite number, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"{who}: alpha must be a number in [0, 1], got {alpha!r}")
    return float(temperature), float(alpha)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``alpha * T² * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)``.

    The ``T²`` keeps the soft term's gradients on the scale of the hard term's as
    ``T`` changes. Without ``labels`` the result is the first (KD) term alone,
    still weighted by ``alpha``. Both terms are means over every position: logits
    ``[..., C]`` are flattened to ``[-1, C]`` (labels to ``[-1]``; label -100 is
    ignored by the CE term, as in ``F.cross_entropy``). The teacher gets no gradient.

    Args:
        student_logits: float ``[..., C]``.
        teacher_logits: float, the same shape.
        temperature: ``T > 0``; softens both distributions.
        alpha: weight of the KD term, in [0, 1].
        labels: int64 ``[...]`` class indices, or None.

    Returns:
        a 0-d fp32-or-wider tensor (the student's dtype promoted to at least fp32).
    """
    temperature, alpha = _check_temperature_alpha(temperature, alpha, "kd_loss")
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"kd_loss: {name} must be a floating-point tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() < 1 or t.shape[-1] < 1:
            raise ValueError(f"kd_loss: {name} must have a class dimension, got shape {tuple(t.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if labels is None and alpha == 0:
        raise ValueError("kd_loss: alpha=0 without labels leaves nothing to minimize")
    c = student_logits.shape[-1]
    s = student_logits.reshape(-1, c)
    acc = torch.promote_types(s.dtype, torch.float32)
    s = s.to(acc)
    t = teacher_logits.detach().reshape(-1, c).to(acc)
    # KL(p_t || p_s), summed over classes and averaged over positions ("batchmean").
    kd = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature * temperature)
    if labels is None:
        return alpha * kd
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"kd_loss: labels must be an int64 tensor of class indices, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"kd_loss: labels shape {tuple(labels.shape)} must be the logits' shape without the class "
            f"dimension, {tuple(student_logits.shape[:-1])}"
        )
    ce = F.cross_entropy(s, labels.reshape(-1).long())
    return alpha * kd + (1.0 - alpha) * ce


class Distiller:
    """A student trained to match a frozen teacher, plus the task loss.

    The teacher is put in eval mode with ``requires_grad`` off and runs under
    ``torch.no_grad``; the student is left as given (call ``student.train()``).

    Args:
        teacher: the reference model (e.g. the dense model before pruning).
        student: the model being trained (e.g. the pruned one).
        temperature: ``T`` of :func:`kd_loss`.
        alpha: weight of the KD term (``1 - alpha`` on the cross entropy).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        for name, m in (("teacher", teacher), ("student", student)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"Distiller: {name} must be an nn.Module, got {type(m).__name__}")
        if teacher is student:
            raise ValueError("Distiller: teacher and student must be different models")
        self.temperature, self.alpha = _check_temperature_alpha(temperature, alpha, "Distiller")
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student

    def loss(self, x, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The :func:`kd_loss` of one batch (the student's forward runs with autograd)."""
        self.teacher.eval()  # in case a parent module's .train() reached it
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return kd_loss(self.student(x), teacher_logits, self.temperature, self.alpha, labels)

    def step(self, optimizer: torch.optim.Optimizer, x, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``zero_grad``, :meth:`loss`, ``backward``, ``optimizer.step()``; returns the loss, detached."""
        optimizer.zero_grad()
        loss = self.loss(x, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()


__all__ = ["Distiller", "kd_loss"]
