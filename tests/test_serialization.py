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
        assert f.get_tensor("0.weight").dtype == torch.int8
    assert meta["format"] == "slimops" and meta["format_version"] == "1"
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
        "newer": ({"format": "slimops", "format_version": "2", "modules": meta}, "format_version 2, newer"),
        "garbage": ({"format": "slimops", "format_version": "1.0", "modules": meta}, "unknown format_version"),
        "missing": ({"format": "slimops", "modules": meta}, "unknown format_version"),
        "corrupt": ({"format": "slimops", "format_version": "1", "modules": "{"}, "corrupt 'modules' map"),
    }
    for name, (metadata, match) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(ValueError, match=match):
            slimops.load(path, skeleton)


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
