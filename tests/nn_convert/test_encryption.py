"""Encrypted slimops files: round trips of every converted module type, keys, each failure mode (a clear
error, the skeleton untouched), no plaintext at rest, a fuzz of corrupted files, and the CLI."""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import tempfile

import pytest
import torch
from safetensors import safe_open
from torch import nn

import slimops
from slimops import cli, encryption
from slimops.nn import (
    BlockSparseInt8Linear,
    BlockSparseLinear,
    CodebookWeightOnlyLinear,
    Fp8DynamicLinear,
    HalfLinear,
    Int4WeightOnlyLinear,
    Int8DynamicConv2d,
    Int8DynamicLinear,
    Int8StaticConv2d,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    MaskedConv2d,
    MaskedLinear,
    Sparse24Int8Linear,
    Sparse24Linear,
)
from slimops.prune import Pruner
from tests.nn_convert.test_serialization import CONVERTERS, make_model, write_v1

pytest.importorskip("cryptography")

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(encryption.ENV_VAR, raising=False)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), f"{k} changed by a failed load"


# ---- every converted module type ------------------------------------------------------------------


def pruned(model: nn.Module) -> nn.Module:
    Pruner(model, "magnitude", "unstructured", sparsity=0.5).update_masks(0.5)
    return model


def conv_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16))


def static_conv(model: nn.Sequential) -> nn.Sequential:
    config = slimops.Int8StaticConfig()
    slimops.prepare(model, config)
    model(torch.randn(4, 3, 8, 8))
    return slimops.convert(model, config)


# name -> (build(seed), input, the slimops class it must contain)
MODULE_TYPES = {
    **{
        kind: (lambda seed, c=convert: c(make_model(seed, 64)), (5, 64), cls)
        for kind, convert, cls in [
            ("int8_dynamic", CONVERTERS["int8_dynamic"], Int8DynamicLinear),
            ("int8_weight_only", CONVERTERS["int8_weight_only"], Int8WeightOnlyLinear),
            ("int8_weight_only_g8", CONVERTERS["int8_weight_only_g8"], Int8WeightOnlyLinear),
            ("fp8_dynamic", CONVERTERS["fp8_dynamic"], Fp8DynamicLinear),
            (
                "int4_weight_only_g32",
                lambda m: slimops.convert(m, slimops.Int4WeightOnlyConfig(group_size=32)),
                Int4WeightOnlyLinear,
            ),
            (
                "codebook_kmeans_row",
                lambda m: slimops.convert(m, slimops.CodebookWeightOnlyConfig(codebook="kmeans", kmeans="row")),
                CodebookWeightOnlyLinear,
            ),
            ("int8_static", CONVERTERS["int8_static"], Int8StaticLinear),
            ("half_bf16", CONVERTERS["half"], HalfLinear),
            ("half_fp16", lambda m: slimops.convert(m, slimops.HalfConfig(torch.float16)), HalfLinear),
            ("sparse_2_4", lambda m: slimops.convert(m, slimops.SparseConfig(0.5, "2:4")), Sparse24Linear),
            (
                "sparse_block",
                lambda m: slimops.convert(m, slimops.SparseConfig(0.75, "block", block_size=16)),
                BlockSparseLinear,
            ),
            (
                "sparse_2_4_then_int8",
                lambda m: slimops.convert(m, [slimops.SparseConfig(0.5, "2:4"), slimops.Int8WeightOnlyConfig()]),
                Sparse24Int8Linear,
            ),
            (
                "sparse_block_then_int8",
                lambda m: slimops.convert(m, [slimops.SparseConfig(0.75, "block", block_size=16),
                                              slimops.Int8WeightOnlyConfig()]),
                BlockSparseInt8Linear,
            ),
            ("masked_linear", pruned, MaskedLinear),
        ]
    },
    "sparse_unstructured": (
        lambda seed: slimops.convert(make_model(seed, 64), slimops.SparseConfig(0.5)),
        (5, 64),
        nn.Linear,  # a dense nn.Linear holding the zeros
    ),
    "masked_conv": (lambda seed: pruned(conv_model(seed)), (2, 3, 8, 8), MaskedConv2d),
    "int8_dynamic_conv": (
        lambda seed: CONVERTERS["int8_dynamic"](conv_model(seed)), (2, 3, 8, 8), Int8DynamicConv2d
    ),
    "int8_static_conv": (lambda seed: static_conv(conv_model(seed)), (2, 3, 8, 8), Int8StaticConv2d),
}


@pytest.mark.parametrize("kind", MODULE_TYPES)
def test_round_trip_of_every_module_type(kind, tmp_path):
    build, shape, cls = MODULE_TYPES[kind]
    model, skeleton = build(0), build(1)
    assert any(type(m) is cls for m in model.modules()), kind
    path = tmp_path / "model.slimops"
    slimops.save(model, path, key=KEY)
    assert path.read_bytes()[:8] == encryption.MAGIC
    x = torch.randn(shape)
    assert not torch.equal(skeleton(x), model(x))
    assert slimops.load(path, skeleton, key=KEY) is skeleton
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        got = skeleton.state_dict()[k]
        assert got.dtype == v.dtype and torch.equal(got, v), k


def test_the_round_trips_cover_every_converted_module_type():
    """A new slimops module class must be added to MODULE_TYPES (ObservedLinear / ObservedConv2d are calibration stages,
    the bases are not used on their own)."""
    import slimops.nn as snn

    classes = {c for c in vars(snn).values() if isinstance(c, type) and issubclass(c, nn.Module)}
    bases = {c for c in classes if c.__name__.startswith("_") or c.__name__ == "PackedLinear"}
    not_converted = {snn.ObservedLinear, snn.ObservedConv2d} | bases
    covered = {cls for _, _, cls in MODULE_TYPES.values()}
    assert classes - not_converted <= covered, classes - not_converted - covered


def test_compiled_tied_and_strided_models(tmp_path):
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    path = tmp_path / "m.slimops"
    slimops.save(torch.compile(model), path, key=KEY)
    skeleton = torch.compile(CONVERTERS["int8_dynamic"](make_model(1, 40)))
    slimops.load(path, skeleton, key=KEY)
    x = torch.randn(3, 40)
    torch.testing.assert_close(skeleton._orig_mod(x), model(x), rtol=0, atol=0)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
            self.b.weight = self.a.weight
            self.c = nn.Linear(8, 4)
            self.c.weight = nn.Parameter(torch.randn(8, 4).t())  # non-contiguous
            self.register_buffer("part", torch.arange(10.0)[2:6])  # a view into a larger storage

        def forward(self, x):
            return self.c(self.b(self.a(x))) + self.part.sum()

    tied, skeleton = Tied(), Tied()
    slimops.save(tied, path, key=KEY)
    slimops.load(path, skeleton, key=KEY)
    x = torch.randn(3, 8)
    torch.testing.assert_close(skeleton(x), tied(x), rtol=0, atol=0)
    assert skeleton.b.weight is skeleton.a.weight


def test_many_chunks_and_empty_tensors(tmp_path, monkeypatch):
    """Tensors larger than a chunk, of zero elements, 0-dim, and bool: each byte where it belongs."""
    monkeypatch.setattr(encryption, "CHUNK_SIZE", 100)
    model = nn.Module()
    model.register_buffer("big", torch.randn(37, 11))
    model.register_buffer("empty", torch.empty(0, 5))
    model.register_buffer("scalar", torch.tensor(3.5))
    model.register_buffer("flags", torch.rand(301) > 0.5)
    model.register_buffer("exact", torch.arange(50, dtype=torch.int16))  # 100 bytes: one full chunk
    skeleton = nn.Module()
    for name, t in model.named_buffers():
        skeleton.register_buffer(name, torch.zeros_like(t))
    path = tmp_path / "m.slimops"
    slimops.save(model, path, key=KEY)
    with encryption.Reader(path, KEY, "test") as reader:
        assert reader.chunk_size == 100 and reader.data_chunks == 17 + 0 + 1 + 4 + 1
    slimops.load(path, skeleton, key=KEY)
    for name, t in model.named_buffers():
        assert torch.equal(getattr(skeleton, name), t), name


# ---- keys ---------------------------------------------------------------------------------------------


def test_generate_key():
    keys = {slimops.generate_key() for _ in range(8)}
    assert len(keys) == 8 and all(isinstance(k, bytes) and len(k) == 32 for k in keys)


@pytest.mark.parametrize(
    "form",
    [
        lambda k: k,
        lambda k: bytearray(k),
        lambda k: k.hex(),
        lambda k: k.hex().upper(),
        lambda k: f"  {k.hex()}\n",
        lambda k: base64.b64encode(k).decode(),
        lambda k: base64.urlsafe_b64encode(k).decode().rstrip("="),
        lambda k: lambda: k,
        lambda k: lambda: k.hex(),
    ],
    ids=["bytes", "bytearray", "hex", "HEX", "hex-space", "base64", "urlsafe-unpadded", "callable", "callable-hex"],
)
def test_key_forms(form, tmp_path):
    key = bytes(range(100, 132))  # its base64 has '+' / '/' and URL-safe '-' / '_'
    assert encryption.resolve_key(form(key), "test") == key
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    slimops.save(model, tmp_path / "m", key=form(key))
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    slimops.load(tmp_path / "m", skeleton, key=form(key))
    x = torch.randn(2, 40)
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)


def test_a_key_callable_is_called_once_per_save_and_load(tmp_path):
    calls = []

    def kms():
        calls.append(1)
        return KEY

    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    slimops.save(model, tmp_path / "m", key=kms)
    slimops.load(tmp_path / "m", CONVERTERS["int8_dynamic"](make_model(1, 40)), key=kms)
    assert len(calls) == 2


def test_the_environment_variable(tmp_path, monkeypatch):
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    monkeypatch.setenv(encryption.ENV_VAR, base64.b64encode(KEY).decode())
    slimops.save(model, tmp_path / "env")
    assert (tmp_path / "env").read_bytes()[:8] == encryption.MAGIC
    slimops.load(tmp_path / "env", CONVERTERS["int8_dynamic"](make_model(1, 40)))
    slimops.load(tmp_path / "env", CONVERTERS["int8_dynamic"](make_model(1, 40)), key=KEY)  # the same key
    # key=False: a plain file, whatever the environment says; the explicit key wins over the environment.
    slimops.save(model, tmp_path / "plain", key=False)
    with safe_open(str(tmp_path / "plain"), framework="pt") as f:
        assert f.metadata()["format_version"] == "2"
    slimops.load(tmp_path / "plain", CONVERTERS["int8_dynamic"](make_model(1, 40)), key=False)
    slimops.save(model, tmp_path / "other", key=OTHER_KEY)
    slimops.load(tmp_path / "other", CONVERTERS["int8_dynamic"](make_model(1, 40)), key=OTHER_KEY)
    with pytest.raises(ValueError, match="key does not open"):
        slimops.load(tmp_path / "other", CONVERTERS["int8_dynamic"](make_model(1, 40)))


def test_no_key_is_the_plain_format_unchanged(tmp_path):
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    slimops.save(model, tmp_path / "m")
    with safe_open(str(tmp_path / "m"), framework="pt") as f:
        assert f.metadata()["format"] == "slimops" and f.metadata()["format_version"] == "2"
    slimops.load(tmp_path / "m", CONVERTERS["int8_dynamic"](make_model(1, 40)))


BAD_KEYS = [
    (b"\x00" * 16, ValueError, "key must be 32 bytes \\(AES-256\\), got 16 bytes"),
    (KEY.hex().encode(), ValueError, "got 64 bytes \\(a hex or base64 key\\? pass it as a str\\)"),
    (KEY[:16].hex(), ValueError, "64 hex digits or the base64 of 32 bytes, got 32 hex digits \\(16 bytes\\)"),
    (KEY.hex() + "00", ValueError, "got 66 hex digits \\(33 bytes\\)"),
    (base64.b64encode(KEY[:20]).decode(), ValueError, "got base64 of 20 bytes"),
    ("not a key!", ValueError, "got 10 characters that are neither"),
    ("", ValueError, "got an empty string"),
    (1234, TypeError, "key must be bytes, a hex or base64 str, or a callable returning one; got int"),
    (True, TypeError, "got True"),
    (lambda: None, TypeError, "key\\(\\) must return bytes or a hex or base64 str, got NoneType"),
    (lambda: b"short", ValueError, "the key key\\(\\) returned must be 32 bytes"),
]


@pytest.mark.parametrize("key,error,match", BAD_KEYS, ids=lambda v: None)
def test_bad_keys_are_refused_naming_the_argument(key, error, match, tmp_path):
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    slimops.save(model, tmp_path / "m", key=KEY)
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    before = snapshot(skeleton)
    with pytest.raises(error, match="slimops.save: .*" + match):
        slimops.save(model, tmp_path / "new", key=key)
    assert not (tmp_path / "new").exists()
    with pytest.raises(error, match="slimops.load: .*" + match):
        slimops.load(tmp_path / "m", skeleton, key=key)
    assert_unchanged(skeleton, before)


@pytest.mark.parametrize("value", ["", "xyz", KEY[:8].hex()])
def test_a_malformed_environment_variable_is_named(value, tmp_path, monkeypatch):
    monkeypatch.setenv(encryption.ENV_VAR, value)
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    with pytest.raises(ValueError, match="slimops.save: the SLIMOPS_MODEL_KEY environment variable must be 64 hex"):
        slimops.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()  # never a plain file when a key was meant


# ---- failure modes: each a clear error, the skeleton as it was ----------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = CONVERTERS["int8_weight_only_g8"](make_model(0, 40))
    path = tmp_path / "m.slimops"
    slimops.save(model, path, key=KEY)
    skeleton = CONVERTERS["int8_weight_only_g8"](make_model(1, 40))
    return path, skeleton, snapshot(skeleton)


def header_end(path) -> int:
    data = open(path, "rb").read(encryption.PREAMBLE_BYTES)
    return encryption.PREAMBLE_BYTES + int.from_bytes(data[48:56], "little")


def test_wrong_key(saved):
    path, skeleton, before = saved
    with pytest.raises(ValueError, match="key does not open .*not the key the file was saved with"):
        slimops.load(path, skeleton, key=OTHER_KEY)
    assert_unchanged(skeleton, before)


def test_an_encrypted_file_without_a_key(saved):
    path, skeleton, before = saved
    for key in (None, False):
        with pytest.raises(ValueError, match="is encrypted: pass key= \\(or set SLIMOPS_MODEL_KEY\\)"):
            slimops.load(path, skeleton, key=key)
    assert_unchanged(skeleton, before)


def test_a_plain_file_with_a_key_is_refused(tmp_path):
    """A key says the file must be authentic; a plain file cannot show that (it could have been swapped in)."""
    slimops.save(CONVERTERS["int8_dynamic"](make_model(0, 40)), tmp_path / "plain")
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    before = snapshot(skeleton)
    with pytest.raises(ValueError, match="is not an encrypted slimops file, but a key was given .*Pass key=False"):
        slimops.load(tmp_path / "plain", skeleton, key=KEY)
    assert_unchanged(skeleton, before)


@pytest.mark.parametrize(
    "where,match",
    [("preamble", "not an encrypted slimops file"), ("header", "header that fails authentication"),
     ("data", "data chunk \\(0, in tensor '0\\.bias'\\) that fails authentication"), ("end", "end marker")],
)  # fmt: skip
def test_a_flipped_byte(where, match, saved):
    path, skeleton, before = saved
    data = bytearray(path.read_bytes())
    offset = {"preamble": 0, "header": header_end(path) - 20, "data": header_end(path) + 3, "end": len(data) - 1}
    data[offset[where]] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=match):
        slimops.load(path, skeleton, key=KEY)
    assert_unchanged(skeleton, before)


def test_truncated_and_extended_files(saved):
    path, skeleton, before = saved
    data = path.read_bytes()
    for size, match in [
        (0, "is not an encrypted slimops file, but a key was given"),  # empty: nothing says it was encrypted
        (5, "is truncated: 5 bytes, shorter than the 64-byte preamble"),
        (encryption.PREAMBLE_BYTES + 10, "is truncated: 74 bytes, its header alone ends at"),
        (header_end(path), f"is truncated: {header_end(path)} bytes, expected {len(data)}"),
        (len(data) - encryption.TAG_BYTES, "is truncated"),  # exactly the end marker cut off
        (len(data) - 1, "is truncated"),
    ]:
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=match):
            slimops.load(path, skeleton, key=KEY)
    path.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="has 1 bytes after its end"):
        slimops.load(path, skeleton, key=KEY)
    assert_unchanged(skeleton, before)


def test_chunks_cannot_be_reordered_or_swapped_between_files(tmp_path, monkeypatch):
    monkeypatch.setattr(encryption, "CHUNK_SIZE", 64)
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    a, b = tmp_path / "a", tmp_path / "b"
    slimops.save(model, a, key=KEY)
    slimops.save(model, b, key=KEY)  # the same model and key: another file id, another file key
    start, step = header_end(a), 64 + encryption.TAG_BYTES
    assert header_end(b) == start
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert data_a != data_b
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    before = snapshot(skeleton)
    swapped = bytearray(data_a)
    swapped[start : start + step], swapped[start + step : start + 2 * step] = (
        data_a[start + step : start + 2 * step],
        data_a[start : start + step],
    )
    spliced = data_a[:start] + data_b[start : start + step] + data_a[start + step :]
    other_header = data_b[: header_end(b)] + data_a[header_end(a) :]
    for name, data in [("swapped", bytes(swapped)), ("spliced", spliced), ("other header", other_header)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match="data chunk \\(0, .*fails authentication"):
            slimops.load(path, skeleton, key=KEY)
    assert_unchanged(skeleton, before)


def test_a_mismatched_skeleton_fails_before_the_data_is_decrypted(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the data would fail too, later
    path.write_bytes(bytes(data))
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    before = snapshot(skeleton)
    with pytest.raises(ValueError, match="at module '0': the file has Int8WeightOnlyLinear, the skeleton has Int8Dyn"):
        slimops.load(path, skeleton, key=KEY)
    assert_unchanged(skeleton, before)


def test_no_message_shows_the_key(saved, tmp_path, monkeypatch):
    path, skeleton, _ = saved
    forms = [KEY.hex(), base64.b64encode(KEY).decode(), repr(KEY)]
    messages = []
    for key in (OTHER_KEY, OTHER_KEY.hex() + "0", OTHER_KEY[:31], KEY.hex()[:62]):
        with pytest.raises((ValueError, TypeError)) as e:
            slimops.load(path, skeleton, key=key)
        messages.append(str(e.value))
    monkeypatch.setenv(encryption.ENV_VAR, KEY.hex()[:62])
    with pytest.raises(ValueError) as e:
        slimops.load(path, skeleton)
    messages.append(str(e.value))
    for message in messages:
        assert not any(f in message for f in forms + [OTHER_KEY.hex(), KEY.hex()[:62]]), message


# ---- no plaintext at rest ------------------------------------------------------------------------------


def test_no_weight_and_no_name_appears_in_the_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = CONVERTERS["int8_weight_only"](make_model(0, 64))
    with torch.no_grad():  # random LayerNorm values: ones and zeros would be no test
        model[3].weight.normal_()
        model[3].bias.normal_()

    def refuse(*args, **kwargs):
        raise AssertionError("a temporary file was created")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    out = tmp_path / "out"
    out.mkdir()
    slimops.save(model, out / "enc", key=KEY)
    monkeypatch.undo()
    assert os.listdir(out) == ["enc"]  # nothing else was written, not even for a moment that left a trace
    slimops.save(model, tmp_path / "plain", key=False)
    encrypted, plain = (out / "enc").read_bytes(), (tmp_path / "plain").read_bytes()
    state = model.state_dict()
    assert len(state) == 8
    needles = [b"qweight", b"weight_scale", b"Int8WeightOnlyLinear", b"format_version", b'"3.bias"']
    for name, t in state.items():
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        needles += [raw, raw[:16], raw[len(raw) // 2 : len(raw) // 2 + 16]]
    for needle in needles:
        assert needle in plain  # the test can see plaintext where there is some
        assert needle not in encrypted


# ---- the fuzz ------------------------------------------------------------------------------------------


def test_fuzz_every_corrupted_file_raises(tmp_path, monkeypatch):
    """>= 1,000 corrupted files, each loaded with the right key: every one raises a ValueError, and the
    skeleton is exactly as it was after each. Flips and garbage anywhere (every byte of the preamble and
    the header once), truncations at every chunk boundary, every offset of the preamble and at random."""
    monkeypatch.setattr(encryption, "CHUNK_SIZE", 256)  # many chunks, many boundaries
    model = CONVERTERS["int8_weight_only_g8"](make_model(0, 40))
    path = tmp_path / "m.slimops"
    slimops.save(model, path, key=KEY)
    good = path.read_bytes()
    skeleton = CONVERTERS["int8_weight_only_g8"](make_model(1, 40))
    before = snapshot(skeleton)
    with encryption.Reader(path, KEY, "test") as reader:
        chunks = [(s.nbytes, encryption._chunks(s.nbytes, 256)) for s in reader.specs]
    head = header_end(path)
    boundaries, at = [encryption.PREAMBLE_BYTES, head], head
    for nbytes, n in chunks:
        for i in range(n):
            at += min(256, nbytes - 256 * i) + encryption.TAG_BYTES
            boundaries.append(at)
    assert at + encryption.TAG_BYTES == len(good) and len(boundaries) > 20

    rng = random.Random(0)
    cases: dict[str, list[bytes]] = {"flip": [], "garbage": [], "truncate": [], "extend": []}

    def flip(offset: int) -> bytes:
        data = bytearray(good)
        data[offset] ^= rng.randrange(1, 256)
        return bytes(data)

    cases["flip"] += [flip(i) for i in range(head)]  # every byte of the preamble and the header
    cases["flip"] += [flip(rng.randrange(len(good))) for _ in range(400)]
    for _ in range(100):
        data, n = bytearray(good), rng.randrange(2, 32)
        start = rng.randrange(len(good) - n)
        data[start : start + n] = bytes(rng.randrange(256) for _ in range(n))
        if data != good:
            cases["garbage"].append(bytes(data))
    cut = set(boundaries) | set(range(encryption.PREAMBLE_BYTES + 1)) | {len(good) - encryption.TAG_BYTES}
    cut |= {b + d for b in boundaries for d in (-1, 1)} | {rng.randrange(len(good)) for _ in range(200)}
    cases["truncate"] += [good[:n] for n in sorted(cut) if n < len(good)]
    cases["extend"] += [good + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(20)]

    silent, other_errors = [], []
    corrupt = tmp_path / "corrupt.slimops"
    for kind, files in cases.items():
        for i, data in enumerate(files):
            corrupt.write_bytes(data)
            try:
                slimops.load(corrupt, skeleton, key=KEY)
            except ValueError as e:
                assert "slimops.load: " in str(e) and str(corrupt) in str(e), str(e)
            except Exception as e:  # noqa: BLE001  (counted: only ValueError is a clear error)
                other_errors.append((kind, i, repr(e)))
            else:
                silent.append((kind, i))
            assert_unchanged(skeleton, before)
    counts = {k: len(v) for k, v in cases.items()}
    total = sum(counts.values())
    print(f"fuzz: {total} corrupted files {counts}: {len(silent)} silent loads, {len(other_errors)} other errors")
    assert total >= 1000, counts
    assert silent == [] and other_errors == []
    slimops.load(path, skeleton, key=KEY)  # the good file still loads
    x = torch.randn(3, 40)
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)


# ---- the CLI -------------------------------------------------------------------------------------------


def test_cli_keygen(tmp_path, capsys):
    path = tmp_path / "model.key"
    assert cli.main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert len(bytes.fromhex(text.strip())) == 32 and text.strip() not in capsys.readouterr().out
    assert cli.main(["keygen", str(path)]) == 2  # never overwrites a key
    assert "File exists" in capsys.readouterr().err and path.read_text() == text
    assert cli.main(["keygen"]) == 0
    assert len(bytes.fromhex(capsys.readouterr().out.strip())) == 32


def read_safetensors(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def test_cli_encrypt_and_decrypt(tmp_path, capsys, monkeypatch):
    model = CONVERTERS["int8_static"](make_model(0, 40))
    plain, enc, dec = tmp_path / "plain.safetensors", tmp_path / "m.enc", tmp_path / "dec.safetensors"
    slimops.save(model, plain)
    key_file = tmp_path / "k"
    assert cli.main(["keygen", str(key_file)]) == 0
    key = key_file.read_text()
    assert cli.main(["encrypt", str(plain), str(enc), "--key-file", str(key_file)]) == 0
    assert enc.read_bytes()[:8] == encryption.MAGIC
    skeleton = CONVERTERS["int8_static"](make_model(1, 40))
    slimops.load(enc, skeleton, key=key)
    x = torch.randn(3, 40)
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)
    monkeypatch.setenv(encryption.ENV_VAR, key)
    assert cli.main(["decrypt", str(enc), str(dec)]) == 0
    # The same file back (not byte for byte: safetensors writes its metadata in a random order).
    (meta_plain, tensors_plain), (meta_dec, tensors_dec) = read_safetensors(plain), read_safetensors(dec)
    assert meta_dec == meta_plain and tensors_dec.keys() == tensors_plain.keys()
    for k, v in tensors_plain.items():
        assert tensors_dec[k].dtype == v.dtype and torch.equal(tensors_dec[k], v), k
    # A raw 32-byte key file works too.
    raw = tmp_path / "raw"
    raw.write_bytes(KEY)
    assert cli.main(["encrypt", str(plain), str(tmp_path / "raw.enc"), "--key-file", str(raw)]) == 0
    slimops.load(tmp_path / "raw.enc", skeleton, key=KEY)


def test_cli_refusals(tmp_path, capsys, monkeypatch):
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    slimops.save(CONVERTERS["int8_dynamic"](make_model(0, 40)), plain)
    slimops.save(CONVERTERS["int8_dynamic"](make_model(0, 40)), enc, key=KEY)
    bad_key = tmp_path / "bad"
    bad_key.write_text("abcd\n")
    raw = tmp_path / "raw"
    raw.write_bytes(OTHER_KEY)
    out = tmp_path / "out"
    for argv, message in [
        (["encrypt", str(plain), str(out)], "no key: pass --key-file PATH or set SLIMOPS_MODEL_KEY"),
        (["encrypt", str(plain), str(out), "--key-file", str(bad_key)], f"key file {bad_key} must be 64 hex"),
        (["encrypt", str(plain), str(out), "--key-file", str(tmp_path / "none")], "No such file"),
        (["encrypt", str(plain), str(plain), "--key-file", str(raw)], "OUT must be another file than IN"),
        (["encrypt", str(enc), str(out), "--key-file", str(raw)], "is encrypted already"),
        (["decrypt", str(plain), str(out), "--key-file", str(raw)], "is not an encrypted slimops file"),
        (["decrypt", str(enc), str(out), "--key-file", str(raw)], "key does not open"),
    ]:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
        assert not out.exists(), argv  # a refused command writes nothing
    for command in ("encrypt", "decrypt"):  # no option takes the key itself, not even as an abbreviation
        with pytest.raises(SystemExit):
            cli.main([command, str(plain), str(out), "--key", KEY.hex()])
        assert "unrecognized arguments: --key" in capsys.readouterr().err


def test_cli_encrypts_a_version_1_file(tmp_path):
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    v1, enc = tmp_path / "v1", tmp_path / "v1.enc"
    write_v1(model, v1)
    slimops.serialization.encrypt_file(v1, enc, KEY)
    with encryption.Reader(enc, KEY, "test") as reader:
        assert reader.metadata["format_version"] == "1"
        assert json.loads(reader.metadata["modules"]) == {"0": "Int8DynamicLinear", "2": "Int8DynamicLinear"}
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    slimops.load(enc, skeleton, key=KEY)
    x = torch.randn(3, 40)
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)
