"""slimops.save / slimops.load: round trips, file size, and refusing what does not match."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import slimops
from slimops.nn import Int8WeightOnlyLinear


def make_model(seed: int, width: int = 256) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.LayerNorm(width))


def static(config):
    """Convert for Int8StaticConfig: prepare, calibrate on one batch, convert."""

    def run(model):
        slimops.prepare(model, config)
        model(torch.randn(16, model[0].in_features))
        return slimops.convert(model, config)

    return run


CONVERTERS = {
    "int8_dynamic": lambda m: slimops.convert(m, slimops.Int8DynamicConfig()),
    "int8_weight_only": lambda m: slimops.convert(m, slimops.Int8WeightOnlyConfig()),
    "int8_weight_only_g8": lambda m: slimops.convert(m, slimops.Int8WeightOnlyConfig(group_size=8)),
    "fp8_dynamic": lambda m: slimops.convert(m, slimops.Fp8DynamicConfig()),
    "int8_static": static(slimops.Int8StaticConfig()),
    "half": lambda m: slimops.convert(m, slimops.HalfConfig(torch.bfloat16)),
}


@pytest.mark.parametrize("kind", CONVERTERS)
@pytest.mark.parametrize("width", [256, 40])  # 40: fp8 pads it to 48
def test_round_trip_gives_identical_outputs(kind, width, tmp_path):
    convert = CONVERTERS[kind]
    model = convert(make_model(0, width))
    path = tmp_path / "model.safetensors"
    slimops.save(model, path)
    skeleton = convert(make_model(1, width))  # other weights, same architecture and config
    x = torch.randn(5, width)
    assert not torch.equal(skeleton(x), model(x))
    assert slimops.load(path, skeleton) is skeleton
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert skeleton.state_dict()[key].dtype == value.dtype, key


def test_metadata(tmp_path):
    model = CONVERTERS["int8_dynamic"](make_model(0))
    path = tmp_path / "m.safetensors"
    slimops.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("0.qweight").dtype == torch.int8
        assert "0.weight" not in f.keys()  # a quantized layer's weight describes it and is not stored
    assert meta["format"] == "slimops" and meta["format_version"] == "2"
    assert json.loads(meta["modules"]) == {"0": "Int8DynamicLinear", "2": "Int8DynamicLinear"}


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_weight_only"])
def test_file_size(kind, tmp_path):
    def size(model, name):
        path = tmp_path / name
        slimops.save(model, path)
        return os.path.getsize(path)

    fp32 = size(make_model(0), "fp32.safetensors")
    bf16 = size(make_model(0).to(torch.bfloat16), "bf16.safetensors")
    quantized = size(CONVERTERS[kind](make_model(0)), "q.safetensors")
    assert quantized <= 0.55 * bf16, (quantized, bf16)
    assert quantized <= 0.28 * fp32, (quantized, fp32)


def test_mismatched_skeletons_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    slimops.save(CONVERTERS["int8_dynamic"](make_model(0)), path)
    with pytest.raises(ValueError, match="at module '0': the file has Int8DynamicLinear, the skeleton has no slimops"):
        slimops.load(path, make_model(0))  # the float model
    with pytest.raises(ValueError, match="at module '0': the file has Int8DynamicLinear, the skeleton has Int8Weight"):
        slimops.load(path, CONVERTERS["int8_weight_only"](make_model(0)))
    partial = slimops.convert(make_model(0), slimops.Int8DynamicConfig(), filter_fn=lambda m, fqn: fqn == "0")
    with pytest.raises(ValueError, match="at module '2'"):
        slimops.load(path, partial)
    shape_error = "'0\\.\\w+' is torch.\\w+ \\(256, ?.*\\) in .* but torch.\\w+ \\(128, ?.*\\) in the skeleton"
    wider = CONVERTERS["int8_dynamic"](
        nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 256), nn.LayerNorm(256))
    )
    with pytest.raises(ValueError, match=shape_error):
        slimops.load(path, wider)
    deeper = nn.Sequential(*make_model(0), nn.Linear(256, 256))
    with pytest.raises(ValueError, match="at module '4'"):
        slimops.load(path, CONVERTERS["int8_dynamic"](deeper))
    # Same slimops modules, but a float layer differs: caught by the state_dict keys.
    no_bias = CONVERTERS["int8_dynamic"](make_model(0))
    no_bias[3] = nn.LayerNorm(256, bias=False)
    with pytest.raises(ValueError, match="unexpected in the file \\['3.bias'\\]"):
        slimops.load(path, no_bias)


def test_foreign_and_newer_files_are_refused(tmp_path):
    tensors = load_file(str(_saved(tmp_path)))
    meta = json.dumps({"0": "Int8DynamicLinear", "2": "Int8DynamicLinear"})
    skeleton = CONVERTERS["int8_dynamic"](make_model(1))
    cases = {
        "plain": (None, "is not a slimops file"),
        "other": ({"format": "pt"}, "is not a slimops file"),
        "newer": ({"format": "slimops", "format_version": "3", "modules": meta}, "format_version 3, newer"),
        "garbage": ({"format": "slimops", "format_version": "1.0", "modules": meta}, "unknown format_version"),
        "missing": ({"format": "slimops", "modules": meta}, "unknown format_version"),
        "corrupt": ({"format": "slimops", "format_version": "1", "modules": "{"}, "corrupt 'modules' map"),
        "not a map": ({"format": "slimops", "format_version": "2", "modules": "[]"}, "corrupt 'modules' map"),
        "zero": ({"format": "slimops", "format_version": "0", "modules": meta}, "unknown format_version '0'"),
    }
    for name, (metadata, match) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(ValueError, match=match):
            slimops.load(path, skeleton)
    with pytest.raises(TypeError, match="slimops.load: skeleton must be a torch.nn.Module, got OrderedDict"):
        slimops.load(_saved(tmp_path), skeleton.state_dict())
    with pytest.raises(TypeError, match="slimops.save: model must be a torch.nn.Module, got OrderedDict"):
        slimops.save(skeleton.state_dict(), tmp_path / "state.safetensors")


def _saved(tmp_path):
    path = tmp_path / "ok.safetensors"
    slimops.save(CONVERTERS["int8_dynamic"](make_model(0)), path)
    return path


def test_shared_and_strided_tensors(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight  # tied
            self.c = nn.Linear(8, 4)
            self.c.weight = nn.Parameter(torch.randn(8, 4).t())  # non-contiguous
            self.register_buffer("part", torch.arange(10.0)[2:6])  # a view into a larger storage

        def forward(self, x):
            return self.c(self.b(self.a(x))) + self.part.sum()

    model, skeleton = Tied(), Tied()
    path = tmp_path / "tied.safetensors"
    slimops.save(model, path)
    slimops.load(path, skeleton)
    x = torch.randn(3, 8)
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)
    assert skeleton.b.weight is skeleton.a.weight


# ---- torch.compile'd models -----------------------------------------------------------------------


def _file(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("kind", ["int8_dynamic", "fp8_dynamic", "half"])
def test_a_compiled_model_saves_and_loads_as_the_model_it_wraps(kind, tmp_path):
    """torch.compile keeps the model under ``_orig_mod``: the file must not carry that prefix, and a compiled
    skeleton must load a file of the plain model (and the other way round)."""
    convert = CONVERTERS[kind]
    model = convert(make_model(0, 40))
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it is called
    slimops.save(model, tmp_path / "plain.safetensors")
    slimops.save(compiled, tmp_path / "compiled.safetensors")
    meta_plain, tensors_plain = _file(tmp_path / "plain.safetensors")
    meta_compiled, tensors_compiled = _file(tmp_path / "compiled.safetensors")
    assert meta_compiled == meta_plain
    assert sorted(tensors_compiled) == sorted(tensors_plain) == sorted(model.state_dict())
    for key, value in tensors_plain.items():
        assert torch.equal(tensors_compiled[key], value), key
    x = torch.randn(5, 40)
    for path in ("plain.safetensors", "compiled.safetensors"):
        plain_skeleton = convert(make_model(1, 40))
        compiled_skeleton = torch.compile(convert(make_model(2, 40)))
        assert slimops.load(tmp_path / path, plain_skeleton) is plain_skeleton
        assert slimops.load(tmp_path / path, compiled_skeleton) is compiled_skeleton
        # The eager model inside: calling the compiled one would compile it (slow, and not what is tested).
        torch.testing.assert_close(plain_skeleton(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(compiled_skeleton._orig_mod(x), model(x), rtol=0, atol=0)


def test_a_file_with_the_compile_prefix_is_refused_clearly(tmp_path):
    """A file written from a compiled model before save unwrapped it: every name starts with
    ``_orig_mod.``. No guessing: an error that says so."""
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    tensors = {"_orig_mod." + k: v.contiguous() for k, v in model.state_dict().items()}
    modules = json.dumps({"_orig_mod.0": "Int8DynamicLinear", "_orig_mod.2": "Int8DynamicLinear"})
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"format": "slimops", "format_version": "2", "modules": modules})
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    for skeleton in (skeleton, torch.compile(skeleton)):
        with pytest.raises(ValueError, match="every name in .* starts with '_orig_mod.' .*torch.compile'd model"):
            slimops.load(path, skeleton)
    # A float model (no slimops module): caught at the state_dict keys, with the same message.
    plain = make_model(0, 40)
    path = tmp_path / "old_float.safetensors"
    tensors = {"_orig_mod." + k: v for k, v in plain.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "slimops", "format_version": "2", "modules": "{}"})
    with pytest.raises(ValueError, match="starts with '_orig_mod.'"):
        slimops.load(path, make_model(1, 40))


# ---- format_version 1 -----------------------------------------------------------------------------

QUANTIZED = ("Int8DynamicLinear", "Int8WeightOnlyLinear", "Int8StaticLinear", "Fp8DynamicLinear")


def write_v1(model: nn.Module, path) -> dict[str, str]:
    """What slimops 1 wrote for ``model``: the quantized linears' stored weight under ``<fqn>.weight``.

    Written by hand (the rename spelled out here, not taken from slimops), with the version 1 metadata.
    """
    modules = {
        fqn: type(m).__name__ for fqn, m in model.named_modules() if type(m).__module__.startswith("slimops")
    }
    quantized = {fqn for fqn, m in model.named_modules(remove_duplicate=False) if type(m).__name__ in QUANTIZED}
    tensors = {}
    for key, value in model.state_dict().items():
        fqn, _, name = key.rpartition(".")
        if fqn in quantized and name == "qweight":
            key = f"{fqn}.weight" if fqn else "weight"
        tensors[key] = value.detach().clone().contiguous()
    save_file(tensors, str(path), metadata={"format": "slimops", "format_version": "1", "modules": json.dumps(modules)})
    return modules


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_weight_only_g8", "int8_static", "fp8_dynamic", "half"])
def test_version_1_files_are_migrated(kind, tmp_path):
    convert = CONVERTERS[kind]
    model = convert(make_model(0, 40))
    path = tmp_path / "v1.safetensors"
    modules = write_v1(model, path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "3.weight" in keys and "3.bias" in keys  # the LayerNorm: its weight is a weight, and stays one
    if kind != "half":
        assert modules["0"] in QUANTIZED and "0.weight" in keys and "0.qweight" not in keys
    else:
        assert modules["0"] == "HalfLinear" and "0.weight" in keys  # HalfLinear's weight is its weight
    skeleton = convert(make_model(1, 40))
    x = torch.randn(7, 40)
    assert not torch.equal(skeleton(x), model(x))
    assert slimops.load(path, skeleton) is skeleton
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(skeleton.state_dict()[key], value), key


def test_version_1_migration_of_a_module_used_twice_and_of_a_root_layer(tmp_path):
    """The v1 module map lists a shared module once, its state_dict keys are at every place; a converted
    root module has its weight at the key ``weight``."""
    torch.manual_seed(0)
    shared = nn.Linear(24, 24)
    model = slimops.convert(nn.Sequential(shared, nn.ReLU(), shared), slimops.Int8DynamicConfig())
    assert model[0] is model[2]
    path = tmp_path / "shared.safetensors"
    assert write_v1(model, path) == {"0": "Int8DynamicLinear"}
    torch.manual_seed(1)
    other = nn.Linear(24, 24)
    skeleton = slimops.convert(nn.Sequential(other, nn.ReLU(), other), slimops.Int8DynamicConfig())
    slimops.load(path, skeleton)
    x = torch.randn(3, 24)
    torch.testing.assert_close(skeleton(x), model(x), rtol=0, atol=0)

    # convert never swaps the model itself: a quantized layer saved on its own.
    root = Int8WeightOnlyLinear.from_float(nn.Linear(24, 11))
    assert write_v1(root, path) == {"": "Int8WeightOnlyLinear"}
    skeleton = Int8WeightOnlyLinear.from_float(nn.Linear(24, 11))
    slimops.load(path, skeleton)
    torch.testing.assert_close(skeleton(x), root(x), rtol=0, atol=0)


def test_versions_are_never_guessed(tmp_path):
    """A v2 file labelled 1, or a v1 file labelled 2: an error, not a reinterpretation."""
    model = CONVERTERS["int8_dynamic"](make_model(0, 40))
    skeleton = CONVERTERS["int8_dynamic"](make_model(1, 40))
    v1 = tmp_path / "v1.safetensors"
    modules = json.dumps(write_v1(model, v1))
    v1_as_2 = tmp_path / "v1_as_2.safetensors"
    meta = {"format": "slimops", "modules": modules}
    save_file(load_file(str(v1)), str(v1_as_2), metadata={**meta, "format_version": "2"})
    with pytest.raises(ValueError, match=r"missing from the file \['0.qweight', '2.qweight'\], unexpected in the file "
                       r"\['0.weight', '2.weight'\]"):
        slimops.load(v1_as_2, skeleton)
    v2 = tmp_path / "v2.safetensors"
    slimops.save(model, v2)
    v2_as_1 = tmp_path / "v2_as_1.safetensors"
    save_file(load_file(str(v2)), str(v2_as_1), metadata={**meta, "format_version": "1"})
    with pytest.raises(ValueError, match="format_version 1 but already has '0.qweight'"):
        slimops.load(v2_as_1, skeleton)
