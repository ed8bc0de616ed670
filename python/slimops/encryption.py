"""Encrypted slimops files: keys, and the AES-256-GCM container that :mod:`slimops.serialization` writes.

The cipher is AES-256-GCM from the ``cryptography`` package (OpenSSL underneath);
nothing here implements a cipher. ``cryptography`` is imported only when a key is
used, so ``import slimops`` does not need it.

Keys (:func:`resolve_key`): 32 bytes, given as ``bytes``, a ``str`` of 64 hex digits
or the base64 of 32 bytes, or a callable that returns one of those (a KMS hook).
``key=None`` reads the ``SLIMOPS_MODEL_KEY`` environment variable (hex or base64);
when it is unset there is no key. ``key=False`` means no key, whatever the
environment says.

The container, format version 3 (integers little-endian)::

    preamble   64 bytes, readable, authenticated as the header's associated data
      0   8   magic        b"SLIMOPSE"
      8   4   version      u32, 3
      12  4   chunk_size   u32, plaintext bytes per data chunk (1 MiB when slimops writes it)
      16  16  file_id      random; with the key, HKDF-SHA256 derives this file's own key
      32  16  key_check    more of that HKDF output: tells a wrong key from a modified file
      48  8   header_len   u64, bytes of the encrypted header, its 16-byte tag included
      56  8   reserved     zero
    header     AES-GCM(file key, nonce(HEADER, 0), JSON) + tag: {"metadata": the plain file's
               metadata (format, format_version 1 or 2, modules), "tensors": [[name, dtype, shape], ...]}
    data       per tensor, in the header's order, ceil(nbytes / chunk_size) chunks, each
               AES-GCM(file key, nonce(DATA, i), bytes) + tag, i counting over the whole file
    end        AES-GCM(file key, nonce(END, n), b"") : the 16-byte tag alone, n = number of data chunks

``nonce(kind, i)`` is 12 bytes, big-endian ``u32 kind, u64 i``; each chunk's associated
data is ``file_id, u32 kind, u64 i``. A nonce is never used twice under one key: every
file has its own key (derived from a random 128-bit ``file_id``), and within a file
``(kind, i)`` is unique. So chunks cannot be reordered (their index is authenticated),
swapped in from another file (another file key), or cut off at a chunk boundary (the
end chunk is authenticated at the index the header implies, and the file's length
must be exactly what the header says).

The header is encrypted, not only authenticated: tensor names, shapes and the module
map give away the architecture, and without the key nothing in the file can be used.
Only the preamble is readable.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch

ENV_VAR = "SLIMOPS_MODEL_KEY"
MAGIC = b"SLIMOPSE"
VERSION = 3
KEY_BYTES = 32
TAG_BYTES = 16
CHUNK_SIZE = 1 << 20

_PREAMBLE = struct.Struct("<8sII16s16sQ8x")
PREAMBLE_BYTES = _PREAMBLE.size  # 64
_HKDF_INFO = b"slimops encrypted model, format version 3"
_HEADER, _DATA, _END = 0, 1, 2
# Sanity bounds on the readable preamble, checked before anything is allocated from it.
_MAX_CHUNK = 1 << 30
_MAX_HEADER = 1 << 30

# The dtypes an encrypted file holds, by the name the header gives them.
_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
        "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
    )
    if hasattr(torch, name)
}  # fmt: skip
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def generate_key() -> bytes:
    """32 random bytes from the operating system's CSPRNG: a key for ``slimops.save(..., key=)``.

    Store it as you would a password (``key.hex()`` gives the form ``SLIMOPS_MODEL_KEY`` takes).
    """
    return secrets.token_bytes(KEY_BYTES)


# ---- keys -------------------------------------------------------------------------------------------


def _key_from_str(text: str, what: str) -> bytes:
    """64 hex digits, or base64 (standard or URL-safe, padding optional) of 32 bytes."""
    s = text.strip()
    if len(s) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in s):
        return bytes.fromhex(s)
    expected = f"{what} must be 64 hex digits or the base64 of {KEY_BYTES} bytes"
    if not s:
        raise ValueError(f"{expected}, got an empty string")
    if len(s) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in s):
        raise ValueError(f"{expected}, got {len(s)} hex digits ({len(s) // 2} bytes): a key is {KEY_BYTES} bytes")
    try:
        padded = s + "=" * (-len(s) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{expected}, got {len(s)} characters that are neither") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{expected}, got base64 of {len(raw)} bytes")
    return raw


def _key_from_value(value, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != KEY_BYTES:
            hint = " (a hex or base64 key? pass it as a str)" if len(raw) in (44, 64) else ""
            raise ValueError(f"{what} must be {KEY_BYTES} bytes (AES-256), got {len(raw)} bytes{hint}")
        return raw
    if isinstance(value, str):
        return _key_from_str(value, what)
    # Never the value itself in a message: it may be a key.
    raise TypeError(
        f"{what} must be bytes, a hex or base64 str, or a callable returning one; got {type(value).__name__}"
    )


def resolve_key(key, who: str) -> bytes | None:
    """The 32-byte key ``key`` stands for, or None for no key (a plain file).

    Args:
        key: bytes, a hex or base64 str, a callable returning bytes or str, ``False``
            (no key, even when ``SLIMOPS_MODEL_KEY`` is set), or None (read
            ``SLIMOPS_MODEL_KEY``; no key when it is unset).
        who: the function, for messages (``"slimops.load"``).

    Raises:
        TypeError: ``key`` (or what the callable returned) is not one of those types.
        ValueError: the key is not 32 bytes, or the environment variable is malformed (or empty).
    """
    if key is False:
        return None
    if key is None:
        text = os.environ.get(ENV_VAR)
        if text is None:
            return None
        return _key_from_str(text, f"{who}: the {ENV_VAR} environment variable")
    if key is True:
        raise TypeError(f"{who}: key must be bytes, a hex or base64 str, a callable, False or None; got True")
    if callable(key):
        value = key()
        if callable(value) or isinstance(value, bool) or value is None:
            raise TypeError(
                f"{who}: key() must return bytes or a hex or base64 str, got {type(value).__name__}"
            )
        return _key_from_value(value, f"{who}: the key key() returned")
    return _key_from_value(key, f"{who}: key")


def read_key_file(path: str | os.PathLike, who: str) -> bytes:
    """A key from a file: 32 raw bytes, or 64 hex digits / base64 text (``slimops keygen`` writes hex)."""
    with open(path, "rb") as f:
        data = f.read(4096)
    if len(data) == KEY_BYTES:
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(
            f"{who}: key file {os.fspath(path)} must hold {KEY_BYTES} raw bytes, 64 hex digits or base64; "
            f"got {len(data)} bytes that are not text"
        ) from None
    return _key_from_str(text, f"{who}: key file {os.fspath(path)}")


# ---- the container ----------------------------------------------------------------------------------


def _crypto(who: str):
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError as e:
        raise ImportError(
            f"{who}: encrypted files need the 'cryptography' package ({e}); pip install 'cryptography>=42'"
        ) from None
    return AESGCM, HKDF, hashes, InvalidTag


def _file_keys(key: bytes, file_id: bytes, who: str):
    """(AESGCM under this file's key, key_check): HKDF-SHA256 of the key, salted with the file id."""
    AESGCM, HKDF, hashes, _ = _crypto(who)
    okm = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES + 16, salt=file_id, info=_HKDF_INFO).derive(key)
    return AESGCM(okm[:KEY_BYTES]), okm[KEY_BYTES:]


def _nonce(kind: int, index: int) -> bytes:
    return struct.pack(">IQ", kind, index)


def _aad(file_id: bytes, kind: int, index: int) -> bytes:
    return file_id + struct.pack("<IQ", kind, index)


def _chunks(nbytes: int, chunk_size: int) -> int:
    return -(-nbytes // chunk_size)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The bytes of a CPU contiguous tensor, without a copy."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def is_encrypted(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like an encrypted slimops file (its magic, or a truncated part of it)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    return bool(head) and MAGIC.startswith(head)


def write(
    path: str | os.PathLike,
    key: bytes,
    metadata: dict[str, str],
    specs: list[TensorSpec],
    get: Callable[[str], torch.Tensor],
    who: str,
    chunk_size: int | None = None,
) -> None:
    """Write an encrypted file, one tensor and one chunk at a time.

    Nothing but ciphertext touches the disk: each chunk is encrypted in memory and
    written to ``path`` itself (no temporary file).

    Args:
        path: the file to write.
        key: 32 bytes (from :func:`resolve_key`).
        metadata: the plain file's metadata strings (format, format_version, modules).
        specs: every tensor's name, dtype and shape, in the order they are written.
        get: ``get(name)`` gives that tensor (any device; moved to the CPU one at a time).
        who: the caller, for messages.
        chunk_size: plaintext bytes per chunk (default :data:`CHUNK_SIZE`).
    """
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    if not 0 < chunk_size <= _MAX_CHUNK:
        raise ValueError(f"{who}: chunk_size must be 1 to {_MAX_CHUNK} bytes, got {chunk_size}")
    for s in specs:
        if s.dtype not in _DTYPE_NAMES:
            raise ValueError(
                f"{who}: tensor {s.name!r} has dtype {s.dtype}, which an encrypted file does not hold "
                f"(it holds {', '.join(_DTYPES)})"
            )
    file_id = secrets.token_bytes(16)
    aead, key_check = _file_keys(key, file_id, who)
    header = json.dumps(
        {
            "metadata": metadata,
            "tensors": [[s.name, _DTYPE_NAMES[s.dtype], list(s.shape)] for s in specs],
        },
        separators=(",", ":"),
    ).encode()
    header_len = len(header) + TAG_BYTES
    preamble = _PREAMBLE.pack(MAGIC, VERSION, chunk_size, file_id, key_check, header_len)
    encrypt_into = getattr(aead, "encrypt_into", None)  # cryptography >= 45: no per-chunk allocation
    out = bytearray(chunk_size + TAG_BYTES)
    out_view = memoryview(out)
    index = 0
    with open(path, "wb") as f:
        f.write(preamble)
        f.write(aead.encrypt(_nonce(_HEADER, 0), header, preamble))
        for s in specs:
            t = get(s.name).detach()
            if t.dtype != s.dtype or tuple(t.shape) != s.shape:
                raise ValueError(f"{who}: tensor {s.name!r} changed while it was written")
            data = _bytes_of(t.to("cpu").contiguous())
            for start in range(0, s.nbytes, chunk_size):
                piece = data[start : start + chunk_size]
                nonce, aad = _nonce(_DATA, index), _aad(file_id, _DATA, index)
                if encrypt_into is not None:
                    n = len(piece) + TAG_BYTES
                    encrypt_into(nonce, piece, aad, out_view[:n])
                    f.write(out_view[:n])
                else:
                    f.write(aead.encrypt(nonce, piece, aad))
                index += 1
            del data, t
        f.write(aead.encrypt(_nonce(_END, index), b"", _aad(file_id, _END, index)))


def _corrupt(who: str, path: str, what: str) -> ValueError:
    return ValueError(f"{who}: {path} {what}: the file is corrupt or was tampered with; nothing was loaded")


class Reader:
    """An open encrypted file: the preamble and header checked on opening, the data on :meth:`tensors`.

    Use as a context manager. ``metadata`` and ``specs`` are known (and authenticated)
    once it is open; :meth:`tensors` decrypts and verifies every chunk and the end
    chunk before it returns anything.
    """

    def __init__(self, path: str | os.PathLike, key: bytes, who: str):
        self.path, self.who = os.fspath(path), who
        self._f = open(self.path, "rb")
        try:
            self._open(key)
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def _open(self, key: bytes) -> None:
        who, path = self.who, self.path
        size = os.fstat(self._f.fileno()).st_size
        preamble = self._f.read(PREAMBLE_BYTES)
        if not preamble or not MAGIC.startswith(preamble[: len(MAGIC)]):
            raise ValueError(f"{who}: {path} is not an encrypted slimops file (it does not start with {MAGIC!r})")
        if len(preamble) < PREAMBLE_BYTES:
            raise _corrupt(
                who, path, f"is truncated: {size} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble"
            )
        _, version, chunk_size, file_id, key_check, header_len = _PREAMBLE.unpack(preamble)
        if version > VERSION:
            raise ValueError(
                f"{who}: {path} has format_version {version}, newer than this slimops reads ({VERSION}); "
                "upgrade slimops"
            )
        if version != VERSION:
            raise _corrupt(who, path, f"has an unknown encrypted format_version {version} (expected {VERSION})")
        if not 0 < chunk_size <= _MAX_CHUNK:
            raise _corrupt(who, path, f"has a chunk size of {chunk_size} bytes (expected 1 to {_MAX_CHUNK})")
        if not TAG_BYTES < header_len <= _MAX_HEADER:
            raise _corrupt(
                who, path, f"has a header length of {header_len} bytes (expected {TAG_BYTES + 1} to {_MAX_HEADER})"
            )
        aead, expected_check = _file_keys(key, file_id, who)
        if not hmac.compare_digest(key_check, expected_check):
            raise ValueError(
                f"{who}: key does not open {path}: it is not the key the file was saved with "
                f"(or the file's preamble was altered); nothing was loaded"
            )
        if size < PREAMBLE_BYTES + header_len:
            raise _corrupt(
                who, path, f"is truncated: {size} bytes, its header alone ends at {PREAMBLE_BYTES + header_len}"
            )
        sealed = self._f.read(header_len)
        _, _, _, InvalidTag = _crypto(who)
        try:
            header = aead.decrypt(_nonce(_HEADER, 0), sealed, preamble)
        except InvalidTag:
            raise _corrupt(who, path, "has a header that fails authentication") from None
        self.metadata, self.specs = _parse_header(header, who, path)
        self._aead, self._file_id, self.chunk_size = aead, file_id, chunk_size
        self.data_chunks = sum(_chunks(s.nbytes, chunk_size) for s in self.specs)
        expected = PREAMBLE_BYTES + header_len + sum(s.nbytes for s in self.specs)
        expected += (self.data_chunks + 1) * TAG_BYTES
        if size < expected:
            raise _corrupt(who, path, f"is truncated: {size} bytes, expected {expected}")
        if size > expected:
            raise _corrupt(who, path, f"has {size - expected} bytes after its end ({expected} expected)")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, decrypted into new CPU tensors, all chunks verified before anything is returned."""
        _, _, _, InvalidTag = _crypto(self.who)
        aead, file_id, chunk_size = self._aead, self._file_id, self.chunk_size
        decrypt_into = getattr(aead, "decrypt_into", None)  # cryptography >= 45: straight into the tensor
        buf = bytearray(min(chunk_size, max((s.nbytes for s in self.specs), default=0)) + TAG_BYTES)
        view = memoryview(buf)
        out: dict[str, torch.Tensor] = {}
        index = 0
        for s in self.specs:
            t = torch.empty(s.shape, dtype=s.dtype)
            dest = _bytes_of(t) if s.nbytes else None
            for start in range(0, s.nbytes, chunk_size):
                n = min(chunk_size, s.nbytes - start)
                sealed = view[: n + TAG_BYTES]
                # NOTE: into a private buffer, not decrypted from an mmap of the file: a writer changing
                # the file during the load could make the tag check and the decryption read different bytes.
                if self._f.readinto(sealed) != n + TAG_BYTES:
                    raise _corrupt(self.who, self.path, f"is truncated inside tensor {s.name!r}")
                nonce, aad = _nonce(_DATA, index), _aad(file_id, _DATA, index)
                try:
                    if decrypt_into is not None:
                        decrypt_into(nonce, sealed, aad, dest[start : start + n])
                    else:
                        dest[start : start + n] = aead.decrypt(nonce, sealed, aad)
                except InvalidTag:
                    what = f"has a data chunk ({index}, in tensor {s.name!r}) that fails authentication"
                    raise _corrupt(self.who, self.path, what) from None
                index += 1
            out[s.name] = t
        end = self._f.read(TAG_BYTES + 1)
        try:
            if len(end) != TAG_BYTES:
                raise InvalidTag
            aead.decrypt(_nonce(_END, index), end, _aad(file_id, _END, index))
        except InvalidTag:
            raise _corrupt(self.who, self.path, "has an end marker that fails authentication") from None
        return out


def _parse_header(raw: bytes, who: str, path: str) -> tuple[dict[str, str], list[TensorSpec]]:
    # Authenticated, so only a key holder could have written a malformed one; still checked, not trusted.
    def bad(what: str) -> ValueError:
        return ValueError(f"{who}: {path} has a malformed encrypted header ({what})")

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(header, dict) or set(header) != {"metadata", "tensors"}:
        raise bad("expected an object with 'metadata' and 'tensors'")
    metadata, tensors = header["metadata"], header["tensors"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("'metadata' must map names to strings")
    if not isinstance(tensors, list):
        raise bad("'tensors' must be a list")
    specs, names = [], set()
    for entry in tensors:
        ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and entry[1] in _DTYPES
        ok = ok and isinstance(entry[2], list) and all(type(d) is int and d >= 0 for d in entry[2])
        if not ok:
            raise bad(f"each tensor must be [name, dtype, shape], got {str(entry)[:80]}")
        if entry[0] in names:
            raise bad(f"tensor {entry[0]!r} is listed twice")
        names.add(entry[0])
        specs.append(TensorSpec(entry[0], _DTYPES[entry[1]], tuple(entry[2])))
    return metadata, specs


def specs_of(state: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in state.items()]


def safetensors_specs(f, who: str) -> list[TensorSpec]:
    """The specs of an open ``safetensors.safe_open`` file, without reading its tensors."""
    specs = []
    for name in f.keys():
        s = f.get_slice(name)
        dtype = _SAFETENSORS_DTYPES.get(s.get_dtype())
        if dtype is None:
            raise ValueError(
                f"{who}: tensor {name!r} has safetensors dtype {s.get_dtype()}, which an encrypted file does not hold"
            )
        specs.append(TensorSpec(name, dtype, tuple(s.get_shape())))
    return specs


_SAFETENSORS_DTYPES = {
    st: _DTYPES[name]
    for st, name in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
        "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
    }.items()
    if name in _DTYPES
}  # fmt: skip
