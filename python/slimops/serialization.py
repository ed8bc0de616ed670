"""``slimops.save`` / ``slimops.load``: a converted model's state in one file.

Without a key the file is safetensors. It holds ``model.state_dict()`` (int8 / fp8 weights and fp32 scales stay
as they are) and three metadata strings:

* ``format``: ``"slimops"``;
* ``format_version``: ``"2"``; a reader refuses versions it does not know;
* ``modules``: JSON ``{fqn: class name}`` of every slimops module in the model
  (a module used at several places is listed at the first).

Loading needs a skeleton: the same architecture, converted with the same
configs (its values are overwritten). The module map makes a skeleton that was
converted differently an error instead of a silent reinterpretation of bytes.

A sharded model (FSDP2's ``fully_shard``, or tensor parallel through
``slimops.distributed.tp_plan``: any DTensor in its state) is saved by every rank
together: the shards are gathered to rank 0 (``get_model_state_dict``, one tensor at a
time, in CPU memory), which writes the file the unsharded model gives, and the others
wait for it. Loading into a sharded skeleton reads the file on every rank (a path every
rank sees) and keeps each rank's shards of it (``set_model_state_dict``).

A ``torch.compile``'d model (or skeleton) is saved and loaded as the model it
wraps: the file is the one the uncompiled model gives, without the
``_orig_mod.`` prefix the wrapper adds to every name.

With a key (``key=`` or the ``SLIMOPS_MODEL_KEY`` environment variable) the file
is format version 3, the AES-256-GCM container of :mod:`slimops.encryption`: the
same tensors and the same three metadata strings (its ``format_version`` says how
the state is laid out, 1 or 2), encrypted and authenticated in chunks. A load with
a key refuses a plain file (it could have been swapped in: a plain file is not
authenticated); ``key=False`` loads and saves plain files whatever the environment says.

Versions:

* 3: the encrypted container; inside, the state of version 2 (or of version 1, for a
  version 1 file encrypted by ``slimops encrypt``).
* 2: the quantized linears (``Int8DynamicLinear``, ``Int8WeightOnlyLinear``,
  ``Int8StaticLinear``, ``Fp8DynamicLinear``) store their int8 / fp8 weight as
  ``<fqn>.qweight`` (their ``weight`` describes the layer and is not stored).
* 1: the same, except that weight was ``<fqn>.weight``. Loading a version 1 file
  renames exactly that key, for every fqn the file's ``modules`` map gives one of
  those four classes (and the other places of that module in the skeleton);
  nothing else is reinterpreted.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from slimops import _measure, distributed, encryption

FORMAT = "slimops"
FORMAT_VERSION = 2

# Version 1 -> 2: the stored weight of these classes moved from ``<fqn>.weight`` to ``<fqn>.qweight``.
_QWEIGHT_CLASSES_V2 = frozenset({"Int8DynamicLinear", "Int8WeightOnlyLinear", "Int8StaticLinear", "Fp8DynamicLinear"})


def _model_class(m: nn.Module) -> type:
    """The class of ``m`` as the model built it: ``fully_shard`` makes it ``FSDP<Class>(FSDPModule, Class)``."""
    cls = type(m)
    while cls.__module__.startswith("torch.distributed") and len(cls.__bases__) > 1:
        cls = cls.__bases__[1]
    return cls


def _slimops_modules(model: nn.Module) -> dict[str, str]:
    return {
        fqn: _model_class(m).__name__
        for fqn, m in model.named_modules()
        if _model_class(m).__module__.split(".")[0] == "slimops"
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


def save(model: nn.Module, path: str | os.PathLike, key=None) -> None:
    """Write ``model.state_dict()`` to ``path`` with the slimops metadata: safetensors, or encrypted with ``key``.

    Args:
        model: a model, usually after ``slimops.convert``; a ``torch.compile``'d one is
            saved as the model it wraps (the same file). A sharded one (DTensors) is
            gathered: every rank calls ``save``, rank 0 writes the one file.
        path: the file to write.
        key: encrypt with this 32-byte key: bytes, a hex or base64 str, or a callable that
            returns one (see ``slimops.generate_key``). None: the ``SLIMOPS_MODEL_KEY``
            environment variable if it is set, else a plain safetensors file (format
            version 2). False: a plain file, whatever the environment says.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"slimops.save: model must be a torch.nn.Module, got {type(model).__name__}")
    secret = encryption.resolve_key(key, "slimops.save")
    model = _measure.unwrap_compiled(model)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "modules": json.dumps(_slimops_modules(model), sort_keys=True),
    }
    if distributed.is_sharded(model):
        # Every rank takes part in gathering the shards; rank 0 writes the one file, the same file
        # the unsharded model gives, and the others wait until it is there.
        state = distributed.full_state_dict(model)
        if torch.distributed.get_rank() == 0:
            _write(path, secret, metadata, state)
        torch.distributed.barrier()
        return
    _write(path, secret, metadata, model.state_dict())


def _write(path, secret, metadata: dict[str, str], state: dict[str, torch.Tensor]) -> None:
    if secret is not None:
        # One tensor at a time: the encrypted file never needs a second copy of the model.
        encryption.write(path, secret, metadata, encryption.specs_of(state), state.__getitem__, "slimops.save")
        return
    from safetensors.torch import save_file

    save_file(_tensors_for_file(state), os.fspath(path), metadata=metadata)


def _read_metadata(path: str, who: str = "slimops.load") -> dict[str, str]:
    """The checked metadata of a plain (safetensors) slimops file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{who}: {path} is not a slimops file (neither safetensors nor encrypted: {e})") from None
    return _check_metadata(path, metadata, who)


def _check_metadata(path: str, metadata: dict[str, str], who: str = "slimops.load") -> dict[str, str]:
    fmt = metadata.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{who}: {path} is not a slimops file (format {fmt!r}, expected {FORMAT!r})")
    version = metadata.get("format_version")
    if version is None or not version.isdigit():
        raise ValueError(f"{who}: {path} has an unknown format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{who}: {path} has format_version {version}, newer than this slimops reads "
            f"({FORMAT_VERSION}); upgrade slimops"
        )
    if int(version) < 1:
        raise ValueError(f"{who}: {path} has an unknown format_version {version!r}")
    try:
        modules = json.loads(metadata.get("modules", ""))
    except json.JSONDecodeError as e:
        raise ValueError(f"{who}: {path} has a corrupt 'modules' map ({e})") from None
    if not isinstance(modules, dict) or not all(isinstance(v, str) for v in modules.values()):
        raise ValueError(
            f"{who}: {path} has a corrupt 'modules' map (expected a JSON object of fqn: class name, "
            f"got {type(modules).__name__})"
        )
    return metadata


def _check_modules(path: str, saved: dict[str, str], skeleton: nn.Module) -> None:
    have = _slimops_modules(skeleton)
    order = [fqn for fqn, _ in skeleton.named_modules()] + sorted(saved.keys() - have.keys())
    for fqn in order:
        if saved.get(fqn) != have.get(fqn):
            _refuse_compiled_names(path, saved)
            raise ValueError(
                f"slimops.load: the skeleton does not match {path} at module {fqn!r}: the file has "
                f"{saved.get(fqn) or 'no slimops module'}, the skeleton has {have.get(fqn) or 'no slimops module'}. "
                "Build the skeleton from the same architecture and convert it with the same configs"
            )


def _refuse_compiled_names(path: str, names) -> None:
    """A clearer error for a file whose every name starts with ``_orig_mod.``: saved from a compiled
    model by a slimops that did not unwrap it (loading never strips the prefix: no guessing)."""
    names = sorted(names)
    if names and all(n.startswith("_orig_mod.") for n in names):
        raise ValueError(
            f"slimops.load: every name in {path} starts with '_orig_mod.' ({names[:3]}): it was saved from a "
            "torch.compile'd model by an older slimops that kept the wrapper's prefix. Save it again from the "
            "model with this slimops (or strip the prefix from its keys and its 'modules' map)"
        )


def _migrate_v1(path: str, saved: dict[str, str], state: dict[str, torch.Tensor], skeleton: nn.Module) -> None:
    """Version 1 -> 2 in place: ``<fqn>.weight`` -> ``<fqn>.qweight`` for the quantized linears, nothing else.

    The fqns are those the file's module map gives a class of :data:`_QWEIGHT_CLASSES_V2`,
    plus every other place of the same module in ``skeleton`` (already checked against
    the map): the map lists a module used at several places once, the state_dict at each.
    """
    first = {id(m): fqn for fqn, m in skeleton.named_modules()}
    fqns = [
        fqn for fqn, m in skeleton.named_modules(remove_duplicate=False)
        if saved.get(first[id(m)]) in _QWEIGHT_CLASSES_V2
    ]  # fmt: skip
    for fqn in fqns:
        prefix = f"{fqn}." if fqn else ""
        old, new = prefix + "weight", prefix + "qweight"
        if new in state:
            raise ValueError(f"slimops.load: {path} is format_version 1 but already has {new!r}: the file is corrupt")
        if old in state:  # a missing one is reported by _check_tensors, by its version 2 name
            state[new] = state.pop(old)


def _check_tensors(path: str, file: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    missing = [k for k in want if k not in file]
    unexpected = [k for k in file if k not in want]
    if missing or unexpected:
        _refuse_compiled_names(path, file)
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


def _check_state(path: str, metadata, saved, state: dict[str, torch.Tensor], skeleton: nn.Module) -> None:
    """Migrate a version 1 state in place, then check it against the skeleton's."""
    if int(metadata["format_version"]) == 1:
        _migrate_v1(path, saved, state, skeleton)
    _check_tensors(path, state, skeleton.state_dict())


def load(path: str | os.PathLike, skeleton: nn.Module, key=None) -> nn.Module:
    """Load a file written by :func:`save` into ``skeleton`` and return it.

    All or nothing: every check (and, for an encrypted file, the authentication of
    every byte) passes before the first tensor of ``skeleton`` is written; a load that
    fails leaves it exactly as it was.

    Args:
        path: the file (any version up to :data:`FORMAT_VERSION`, or an encrypted
            one; older ones are migrated as the module docstring says).
        skeleton: the same architecture, converted with the same configs; its
            tensors are overwritten in place (on their own devices). A
            ``torch.compile``'d skeleton is loaded through the model it wraps. A
            sharded one (DTensors) keeps each rank's shards; every rank calls ``load``.
        key: the key the file was saved with, as :func:`save` takes it (None: the
            ``SLIMOPS_MODEL_KEY`` environment variable if set). With a key, a plain
            file is refused; False loads a plain file whatever the environment says.

    Returns:
        ``skeleton`` itself.

    Raises:
        ValueError: the file is not a slimops file, has a newer or unknown
            format_version, does not match the skeleton (module classes, keys,
            dtypes or shapes); or is encrypted and the key is missing or wrong, or
            it is truncated or any byte of it was changed; or a key was given for
            a plain file; or the key is malformed.
        TypeError: ``skeleton`` is not a module, or ``key`` is not a key.
    """
    if not isinstance(skeleton, nn.Module):
        raise TypeError(f"slimops.load: skeleton must be a torch.nn.Module, got {type(skeleton).__name__}")
    path = os.fspath(path)
    secret = encryption.resolve_key(key, "slimops.load")
    plain = _measure.unwrap_compiled(skeleton)
    if encryption.is_encrypted(path):
        if secret is None:
            raise ValueError(
                f"slimops.load: {path} is encrypted: pass key= (or set {encryption.ENV_VAR}) to load it"
            )
        with encryption.Reader(path, secret, "slimops.load") as reader:
            metadata = _check_metadata(path, reader.metadata)
            saved = json.loads(metadata["modules"])
            _check_modules(path, saved, plain)
            # Before decrypting the data: a skeleton that does not fit fails fast.
            meta = {s.name: torch.empty(s.shape, dtype=s.dtype, device="meta") for s in reader.specs}
            _check_state(path, metadata, saved, meta, plain)
            state = reader.tensors()
    else:
        if secret is not None:
            raise ValueError(
                f"slimops.load: {path} is not an encrypted slimops file, but a key was given (key= or "
                f"{encryption.ENV_VAR}): "
                "a plain file is not authenticated, so it is refused when a key is expected. Pass key=False "
                "to load a plain file"
            )
        from safetensors.torch import load_file

        metadata = _read_metadata(path)
        saved = json.loads(metadata["modules"])
        _check_modules(path, saved, plain)
        state = load_file(path)
    _check_state(path, metadata, saved, state, plain)
    if distributed.is_sharded(plain):
        distributed.load_full_state_dict(plain, state)  # each rank keeps its shards of the whole file
    else:
        plain.load_state_dict(state, strict=True)
    return skeleton


def _crypt_arguments(src, dst, key, who: str) -> tuple[str, str, bytes]:
    """``(src, dst, key bytes)`` for encrypt_file / decrypt_file: a key is required, and OUT is not IN."""
    src, dst = os.fspath(src), os.fspath(dst)
    secret = encryption.resolve_key(key, who)
    if secret is None:
        raise ValueError(f"{who}: no key: pass key= or set {encryption.ENV_VAR}")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"{who}: OUT must be another file than IN ({dst})")
    return src, dst, secret


def encrypt_file(src: str | os.PathLike, dst: str | os.PathLike, key) -> None:
    """Encrypt a plain slimops file (format version 1 or 2) into ``dst``, one tensor at a time.

    ``dst`` holds the same tensors and metadata; :func:`load` with ``key`` reads it as it
    would ``src``, and :func:`decrypt_file` gives ``src`` back. No skeleton is needed.

    Args:
        src: a plain file written by :func:`save` (or by slimops 1).
        dst: the encrypted file to write (not ``src``).
        key: as :func:`save` takes it; None reads ``SLIMOPS_MODEL_KEY``, which must then be set.
    """
    from safetensors import safe_open

    who = "slimops encrypt"
    src, dst, secret = _crypt_arguments(src, dst, key, who)
    if encryption.is_encrypted(src):
        raise ValueError(f"{who}: {src} is encrypted already")
    metadata = _read_metadata(src, who)
    with safe_open(src, framework="pt") as f:
        specs = encryption.safetensors_specs(f, who)
        encryption.write(dst, secret, metadata, specs, f.get_tensor, who)


def decrypt_file(src: str | os.PathLike, dst: str | os.PathLike, key) -> None:
    """Decrypt an encrypted slimops file into a plain one (safetensors, the metadata it was saved with).

    Every chunk is authenticated before ``dst`` is opened: a wrong key or a modified
    file writes nothing.

    Args:
        src: an encrypted file written by :func:`save` or :func:`encrypt_file`.
        dst: the plain file to write (not ``src``).
        key: as :func:`load` takes it; None reads ``SLIMOPS_MODEL_KEY``, which must then be set.
    """
    from safetensors.torch import save_file

    who = "slimops decrypt"
    src, dst, secret = _crypt_arguments(src, dst, key, who)
    if not encryption.is_encrypted(src):
        raise ValueError(f"{who}: {src} is not an encrypted slimops file")
    with encryption.Reader(src, secret, who) as reader:
        metadata = _check_metadata(src, reader.metadata, who)
        tensors = reader.tensors()
    save_file(tensors, dst, metadata=metadata)
