"""Knowledge distillation (Hinton et al. 2015) to recover the accuracy a compressed model lost.

::

    distiller = slimops.distill.Distiller(teacher=dense_model, student=pruned_model, temperature=4, alpha=0.5)
    for x, y in batches:
        distiller.step(optimizer, x, y)   # or: loss = distiller.loss(x, y); loss.backward(); ...
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _real_number(value, arg: str, who: str, expected: str) -> float:
    """``value`` as a float: a real number (int, float, NumPy scalar, ``Fraction``) or a 0-d real tensor.

    bool is refused (``temperature=True`` is a mistake, not 1), and so is a tensor that
    requires grad: it is read as a constant, so a learnable temperature would silently get no gradient.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise ValueError(
                f"{who}: {arg} must be {expected}, got a {value.dtype} tensor of shape {tuple(value.shape)} "
                "(a tensor is accepted only 0-d and real)"
            )
        if value.requires_grad:
            raise ValueError(f"{who}: {arg} is read as a constant and gets no gradient: pass it detached (or a float)")
        value = value.item()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{who}: {arg} must be {expected}, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range (then out of every accepted range too)
        return math.inf if value > 0 else -math.inf


def _check_temperature_alpha(temperature, alpha, who: str) -> tuple[float, float]:
    expected = "a positive finite number"
    t = _real_number(temperature, "temperature", who, expected)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{who}: temperature must be {expected}, got {temperature!r}")
    expected = "a number in [0, 1]"
    a = _real_number(alpha, "alpha", who, expected)
    if not 0 <= a <= 1:
        raise ValueError(f"{who}: alpha must be {expected}, got {alpha!r}")
    return t, a


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

    Masked classes: a class the teacher gives probability exactly 0 (a ``-inf``
    logit, e.g. vocabulary masking) adds 0 to the KL (``0 * log 0 = 0``), whatever
    the student's logit there, ``-inf`` included. A student ``-inf`` where the
    teacher's probability is positive makes the loss ``inf``; a row of the teacher
    with no finite logit has no distribution and makes it NaN.

    Args:
        student_logits: float ``[..., C]``, at least one position.
        teacher_logits: float, the same shape.
        temperature: ``T > 0``: a real number (int, float, NumPy scalar) or a 0-d
            tensor that needs no gradient; softens both distributions.
        alpha: weight of the KD term, in [0, 1] (the same types as ``temperature``).
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
    if student_logits.numel() == 0:
        # A mean over no position is NaN, not a loss.
        raise ValueError(
            f"kd_loss: student_logits has no position to average over (shape {tuple(student_logits.shape)})"
        )
    if labels is None and alpha == 0:
        raise ValueError("kd_loss: alpha=0 without labels leaves nothing to minimize")
    c = student_logits.shape[-1]
    s = student_logits.reshape(-1, c)
    acc = torch.promote_types(s.dtype, torch.float32)
    s = s.to(acc)
    t = teacher_logits.detach().reshape(-1, c).to(acc)
    # KL(p_t || p_s), summed over classes and averaged over positions ("batchmean").
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    p_t = log_p_t.exp()
    # NOTE: not F.kl_div: where p_t is 0 (a -inf teacher logit) it computes 0 * (-inf - log_p_s), NaN.
    # The where also keeps the gradient there 0 when the student's logit is -inf too.
    kl = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros((), dtype=acc, device=s.device))
    kd = kl.sum(-1).mean() * (temperature * temperature)
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

    Teacher and student may share modules and *frozen* parameters (e.g. one
    embedding table, ``requires_grad=False``): those are left as the student has
    them, and a shared module is in eval mode only while the teacher runs. A
    shared parameter that still requires grad is refused: training it would move
    the teacher, and freezing it would freeze the student (build the student from
    ``copy.deepcopy(teacher)``, or freeze the shared parameters first).

    Args:
        teacher: the reference model (e.g. the dense model before pruning).
        student: the model being trained (e.g. the pruned one).
        temperature: ``T`` of :func:`kd_loss`.
        alpha: weight of the KD term (``1 - alpha`` on the cross entropy).

    Raises:
        ValueError: ``teacher is student``, they share a parameter that requires
            grad (the error names it in both), or temperature / alpha are out of range.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        for name, m in (("teacher", teacher), ("student", student)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"Distiller: {name} must be an nn.Module, got {type(m).__name__}")
        if teacher is student:
            raise ValueError("Distiller: teacher and student must be different models")
        self.temperature, self.alpha = _check_temperature_alpha(temperature, alpha, "Distiller")
        _check_no_trainable_shared(teacher, student)
        student_modules = {id(m) for m in student.modules()}
        # Modules the student holds too: eval mode only while the teacher runs (see _teacher_mode).
        self._shared_modules = [m for m in teacher.modules() if id(m) in student_modules]
        self.teacher = teacher
        self.student = student
        with self._teacher_mode():
            pass  # leaves the teacher's own modules in eval mode, the shared ones as the student has them
        # Every shared parameter is frozen already (checked above): this freezes only the teacher's own.
        teacher.requires_grad_(False)

    @contextlib.contextmanager
    def _teacher_mode(self) -> Iterator[None]:
        """The teacher in eval mode; on exit the modules it shares with the student go back to their mode."""
        modes = [(m, m.training) for m in self._shared_modules]
        self.teacher.eval()  # every time: a parent module's .train() may have reached it
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training

    def loss(self, x, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The :func:`kd_loss` of one batch (the student's forward runs with autograd)."""
        with torch.no_grad(), self._teacher_mode():
            teacher_logits = self.teacher(x)
        return kd_loss(self.student(x), teacher_logits, self.temperature, self.alpha, labels)

    def step(self, optimizer: torch.optim.Optimizer, x, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``zero_grad``, :meth:`loss`, ``backward``, ``optimizer.step()``; returns the loss, detached."""
        optimizer.zero_grad()
        loss = self.loss(x, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()


def _storage_key(p: torch.Tensor) -> tuple | None:
    """What identifies ``p``'s memory: two parameters that alias it (tied, or one made from the other's
    ``.data``) share it. None for a parameter without memory (empty, or on the meta device)."""
    if p.device.type == "meta" or p.untyped_storage().nbytes() == 0:
        return None
    return (p.device, p.untyped_storage().data_ptr())


def _check_no_trainable_shared(teacher: nn.Module, student: nn.Module) -> None:
    """Refuse memory held by parameters of both models that the student trains, naming them in each."""
    # memory -> (the student's first name for it, whether the student trains it)
    in_student: dict[tuple, tuple[str, bool]] = {}
    for name, p in student.named_parameters(remove_duplicate=False):
        key = _storage_key(p)
        if key is not None:
            first, trained = in_student.get(key, (name, False))
            in_student[key] = (first, trained or p.requires_grad)
    shared = []
    for name, p in teacher.named_parameters(remove_duplicate=False):
        first, trained = in_student.get(_storage_key(p), (None, False))
        if trained:
            shared.append(f"teacher.{name} = student.{first}")
    if shared:
        shown = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
        raise ValueError(
            f"Distiller: the teacher shares {len(shared)} trainable parameter(s) with the student ({shown}): "
            "training them would change the teacher, and freezing them would freeze the student. Build the "
            "student from copy.deepcopy(teacher), or freeze the shared parameters (requires_grad_(False)) "
            "if sharing them is intended"
        )


__all__ = ["Distiller", "kd_loss"]
