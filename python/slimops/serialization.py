"""``slimops.save`` / ``slimops.load``: a converted model's state in one safetensors file.

The file holds ``model.state_dict()`` (int8 / fp8 weights and fp32 scales stay
as they are) and three metadata strings:

* ``format``: ``"slimops"``;
* ``format_version``: ``"1"``; a reader refuses versions it does not know;
* ``modules``: JSON ``{fqn: class name}`` of every slimops module in the model.

Loading needs a skeleton: the same architecture, converted with the same
configs (its values are overwritten). The module map makes a skeleton that was
converted differently an error instead of a silent reinterpretation of bytes.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

FORMAT = "slimops"
FORMAT_VERSION = 1


def _slimops_modules(model: nn.Module) -> dict[str, str]:
    return {
        fqn: type(m).__name__
        for fqn, m in model.named_modules()
        if type(m).__module__.split(".")[0] == "slimops"
    }


def _tensors_for_file(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-exclusive tensors: what safetensors can write.

    Tied weights (two keys, one storage) and views (non-contiguous, or a part of
    a larger storage) are written as separate copies.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[torch.device, int]] = set()
    for key, t in state.items():
        t = t.detach()
        storage = t.untyped_storage()
        ident = (t.device, storage.data_ptr())
        whole = t.is_contiguous() and t.storage_offset() == 0 and t.numel() * t.element_size() == storage.nbytes()
        if not whole or ident in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        else:
            seen.add(ident)
        out[key] = t.cpu()
    return out


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model.state_dict()`` to ``path`` (safetensors) with the slimops metadata.

    Args:
        model: a model, usually after ``slimops.convert``.
        path: the file to write.
    """
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "modules": json.dumps(_slimops_modules(model), sort_keys=True),
    }
    save_file(_tensors_for_file(model.state_dict()), os.fspath(path), metadata=metadata)


def _read_metadata(path: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    fmt = metadata.get("format")
    if fmt != FORMAT:
        raise ValueError(f"slimops.load: {path} is not a slimops file (format {fmt!r}, expected {FORMAT!r})")
    version = metadata.get("format_version")
    if version is None or not version.isdigit():
        raise ValueError(f"slimops.load: {path} has an unknown format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"slimops.load: {path} has format_version {version}, newer than this slimops reads "
            f"({FORMAT_VERSION}); upgrade slimops"
        )
    if int(version) < 1:
        raise ValueError(f"slimops.load: {path} has an unknown format_version {version!r}")
    try:
        json.loads(metadata.get("modules", ""))
    except json.JSONDecodeError as e:
        raise ValueError(f"slimops.load: {path} has a corrupt 'modules' map ({e})") from None
    return metadata


def _check_modules(path: str, saved: dict[str, str], skeleton: nn.Module) -> None:
    have = _slimops_modules(skeleton)
    order = [fqn for fqn, _ in skeleton.named_modules()] + sorted(saved.keys() - have.keys())
    for fqn in order:
        if saved.get(fqn) != have.get(fqn):
            raise ValueError(
                f"slimops.load: the skeleton does not match {path} at module {fqn!r}: the file has "
                f"{saved.get(fqn) or 'no slimops module'}, the skeleton has {have.get(fqn) or 'no slimops module'}. "
                "Build the skeleton from the same architecture and convert it with the same configs"
            )


def _check_tensors(path: str, file: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    missing = [k for k in want if k not in file]
    unexpected = [k for k in file if k not in want]
    if missing or unexpected:
        raise ValueError(
            f"slimops.load: the skeleton's state_dict does not match {path}: "
            f"missing from the file {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected in the file {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, t in want.items():
        f = file[key]
        if f.dtype != t.dtype or f.shape != t.shape:
            raise ValueError(
                f"slimops.load: {key!r} is {f.dtype} {tuple(f.shape)} in {path} but "
                f"{t.dtype} {tuple(t.shape)} in the skeleton"
            )


def load(path: str | os.PathLike, skeleton: nn.Module) -> nn.Module:
    """Load a file written by :func:`save` into ``skeleton`` and return it.

    Args:
        path: the file.
        skeleton: the same architecture, converted with the same configs; its
            tensors are overwritten in place (on their own devices).

    Raises:
        ValueError: the file is not a slimops file, has a newer or unknown
            format_version, or does not match the skeleton (module classes,
            keys, dtypes or shapes).
    """
    from safetensors.torch import load_file

    path = os.fspath(path)
    metadata = _read_metadata(path)
    _check_modules(path, json.loads(metadata["modules"]), skeleton)
    state = load_file(path)
    _check_tensors(path, state, skeleton.state_dict())
    skeleton.load_state_dict(state, strict=True)
    return skeleton
