"""Tensor parallel inference of a converted Llama-style model (gloo, 2 CPU processes).

``parallelize_module(model, mesh, slimops.distributed.tp_plan(model))`` on a tiny random
``LlamaForCausalLM`` converted with ``Int8WeightOnlyConfig`` (per channel and per group),
``Int8DynamicConfig`` and ``SparseConfig(2:4)``: the stored weights and scales are DTensors
sharded along the outputs (q/k/v/gate/up) or the inputs (o/down), each local shard is that
part of the one-process buffer, and the logits equal the one-process converted model's.
A module that cannot be sharded is an error that names it and says why.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import slimops
from slimops.distributed import tp_plan
from tests.distributed.launch import spawn

transformers = pytest.importorskip("transformers")

WORLD = 2
CONFIGS = {
    "int8_weight_only": lambda: slimops.Int8WeightOnlyConfig(),
    "int8_weight_only_g32": lambda: slimops.Int8WeightOnlyConfig(group_size=32),
    "int8_dynamic": lambda: slimops.Int8DynamicConfig(),
    "sparse_2_4": lambda: slimops.SparseConfig(0.5, pattern="2:4"),
}
# The buffer dim each style splits (None: kept whole on every rank).
COLWISE = {"qweight": 0, "weight_scale": 0, "bias": 0, "values": 0, "meta": 0}
ROWWISE = {
    "int8_weight_only": {"qweight": 1, "weight_scale": None},
    "int8_weight_only_g32": {"qweight": 1, "weight_scale": 1},
    "int8_dynamic": {"qweight": 1, "weight_scale": None},
    "sparse_2_4": {"values": 1, "meta": 1},
}


def _llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def _converted(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return slimops.convert(_llama(), CONFIGS[name]())


def _tp_worker(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh("cpu", (world,))
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(3))
    out = {}
    for name in CONFIGS:
        reference = _converted(name)
        model = copy.deepcopy(reference)
        plan = tp_plan(model, tp_size=world)
        parallelize_module(model, mesh, plan)
        problems = []
        for fqn in plan:
            ref, got = reference.get_submodule(fqn), model.get_submodule(fqn)
            dims = COLWISE if fqn.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")) else ROWWISE[name]
            for buf in [*type(ref)._stored, "bias"]:
                whole, shard = getattr(ref, buf), getattr(got, buf)
                if whole is None:
                    continue
                dim = dims.get(buf) if buf != "bias" or dims is COLWISE else None
                want = whole if dim is None else whole.chunk(world, dim)[rank]
                expected = Replicate() if dim is None else Shard(dim)
                if tuple(shard.placements) != (expected,):
                    problems.append(f"{fqn}.{buf}: placements {shard.placements}, expected {expected}")
                if not torch.equal(shard.to_local(), want):
                    problems.append(f"{fqn}.{buf}: the local shard is not that part of the one-process buffer")
        with torch.no_grad():
            out[name] = {
                "problems": problems,
                "logits": model(ids).logits,
                "reference": reference(ids).logits,
                "types": sorted({type(m).__name__ for m in model.modules()}),
            }
    out["errors"] = _style_errors(mesh)
    out["uneven"] = _uneven_mlp(mesh)
    return out


def _uneven_mlp(mesh) -> dict:
    """37 hidden features over 2 ranks (19 + 18): colwise then rowwise, fp32 and float64 inputs."""
    from torch import nn
    from torch.distributed.tensor.parallel import parallelize_module

    from slimops.distributed import PackedColwiseParallel, PackedRowwiseParallel

    out = {}
    for name in ("int8_weight_only", "int8_dynamic"):
        torch.manual_seed(5)
        reference = slimops.convert(nn.Sequential(nn.Linear(24, 37), nn.ReLU(), nn.Linear(37, 5)), CONFIGS[name]())
        model = parallelize_module(
            copy.deepcopy(reference), mesh, {"0": PackedColwiseParallel(), "2": PackedRowwiseParallel()}
        )
        x = torch.randn(3, 24, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            out[name] = {
                "shard_rows": model[0].qweight.to_local().shape[0],
                "fp32": (model(x), reference(x)),
                "fp64": (model(x.double()), reference(x.double())),
            }
    return out


def _style_errors(mesh) -> list[str]:
    """What parallelize_module says for a packed layer it cannot shard, or layouts it does not take."""
    from torch.distributed.tensor.parallel import parallelize_module

    from slimops.distributed import PackedColwiseParallel

    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = slimops.convert(_llama(), slimops.SparseConfig(0.75, pattern="block", block_size=16))
    fqn = "model.layers.0.self_attn.q_proj"
    for model, style in [
        (block, PackedColwiseParallel(fqn=fqn)),
        (_converted("int8_weight_only"), PackedColwiseParallel(fqn=fqn, use_local_output=False)),
    ]:
        try:
            parallelize_module(model, mesh, {fqn: style})
        except ValueError as e:
            errors.append(str(e))
    return errors


def test_the_styles_name_a_module_they_cannot_shard_and_refuse_other_layouts(ranks):
    for result in ranks:
        unshardable, layouts = result["errors"]
        assert "'model.layers.0.self_attn.q_proj' (BlockSparseLinear)" in unshardable
        assert "no tensor-parallel sharding" in unshardable
        assert "default layouts only" in layouts and "use_local_output=True" in layouts


@pytest.fixture(scope="module")
def ranks():
    return spawn(_tp_worker, WORLD)


@pytest.mark.parametrize("name", CONFIGS)
def test_tensor_parallel_converted_llama_equals_one_process(ranks, name):
    for rank, result in enumerate(ranks):
        got = result[name]
        assert not got["problems"], got["problems"]
        assert {"Int8WeightOnlyLinear", "Int8DynamicLinear", "Sparse24Linear"} & set(got["types"]), got["types"]
        ref = got["reference"]
        assert ref.abs().max() > 0
        # Float tolerance: the ranks' partial sums are added in another order than one GEMM adds them.
        torch.testing.assert_close(got["logits"], ref, rtol=1e-4, atol=1e-5, msg=f"rank {rank}")


def test_a_module_without_sharding_is_named_with_the_reason():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = slimops.convert(_llama(), slimops.SparseConfig(0.75, pattern="block", block_size=16))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "BlockSparseLinear"
    named = r"'model\.layers\.0\.self_attn\.q_proj' \(BlockSparseLinear\).*no tensor-parallel"
    with pytest.raises(ValueError, match=named):
        tp_plan(model, tp_size=WORLD)


def test_a_split_that_cuts_weight_groups_is_named_with_the_reason():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = slimops.convert(_llama(), slimops.Int8WeightOnlyConfig(group_size=32))
    tp_plan(model, tp_size=2)  # 64 inputs in parts of 32: whole groups
    # Four ranks: o_proj's 64 inputs in parts of 16, half a group of 32 each.
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.o_proj'.*rowwise.*groups of 32"):
        tp_plan(model, tp_size=4)


@pytest.mark.parametrize("name", ["int8_weight_only", "int8_dynamic"])
def test_an_uneven_split_and_float64_inputs_equal_one_process(ranks, name):
    for rank, result in enumerate(ranks):
        got = result["uneven"][name]
        assert got["shard_rows"] == (19, 18)[rank]
        for dtype in ("fp32", "fp64"):
            tp, one = got[dtype]
            assert tp.dtype == one.dtype
            torch.testing.assert_close(tp, one, rtol=1e-5, atol=1e-6, msg=f"rank {rank}, {dtype}")
