"""``slimops.save`` / ``slimops.load`` of sharded models (gloo, 2 CPU processes).

A sharded model (FSDP2 or tensor parallel) is saved as one file, written by rank 0: the same
file its unsharded model gives, so one process can load it. ``slimops.load`` puts a file into
a sharded skeleton: every rank reads it and keeps its shards.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import slimops
from slimops import prune as P
from tests.distributed.launch import spawn

WORLD = 2


def _masked_mlp(seed: int) -> tuple[nn.Module, P.Pruner]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 17), nn.ReLU(), nn.Linear(17, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = P.Pruner(model, "magnitude", "unstructured", 0.5)
    return model, pruner


def _fsdp(model: nn.Module, pruner: P.Pruner) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in pruner.layers.values():
        fully_shard(layer)
    return fully_shard(model)


def _whole_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v.clone() for k, v in model.state_dict().items()}


def _fsdp_worker(rank: int, world: int, folder: str) -> dict:
    model, pruner = _masked_mlp(0)
    _fsdp(model, pruner)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(3, 12)), torch.randint(0, 5, (3,))).backward()
    opt.step()
    pruner.step()  # prunes: the masks are in the file too
    slimops.save(model, os.path.join(folder, "fsdp.safetensors"))
    saved = _whole_state(model)
    skeleton, skeleton_pruner = _masked_mlp(1)  # other values everywhere, masks all True
    _fsdp(skeleton, skeleton_pruner)
    slimops.load(os.path.join(folder, "fsdp.safetensors"), skeleton)
    return {"saved": saved, "loaded": _whole_state(skeleton), "files": sorted(os.listdir(folder))}


def _worker(rank: int, world: int, folder: str) -> dict:
    # Both engines in one pair of processes: starting them costs more than the checks.
    return {"fsdp": _fsdp_worker(rank, world, folder), "tp": _tp_worker(rank, world, folder)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("save_load")
    return folder, spawn(_worker, WORLD, str(folder))


def test_fsdp2_model_saves_one_file_and_loads_into_shards(runs):
    tmp_path, both = runs
    ranks = [r["fsdp"] for r in both]
    saved = ranks[0]["saved"]
    assert any(not m.all() for k, m in saved.items() if k.endswith("mask")), "nothing was pruned"
    assert ranks[0]["files"] == ranks[1]["files"] == ["fsdp.safetensors"]  # one file, by rank 0
    for r in ranks:
        assert r["saved"].keys() == r["loaded"].keys() == saved.keys()
        for key, want in saved.items():
            assert torch.equal(r["saved"][key], want), f"the ranks trained different models: {key}"
            assert torch.equal(r["loaded"][key], want), f"the sharded skeleton did not get {key} back"
    # One process loads the file into the unsharded model.
    model, _ = _masked_mlp(2)
    slimops.load(tmp_path / "fsdp.safetensors", model)
    for key, want in saved.items():
        assert torch.equal(model.state_dict()[key], want), key


def _llama(seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return slimops.convert(transformers.LlamaForCausalLM(cfg).eval(), slimops.Int8DynamicConfig())


def _tp_worker(rank: int, world: int, folder: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from slimops.distributed import tp_plan

    mesh = init_device_mesh("cpu", (world,))
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(3))
    reference = _llama(0)
    model = parallelize_module(copy.deepcopy(reference), mesh, tp_plan(reference))
    slimops.save(model, os.path.join(folder, "tp.safetensors"))
    skeleton = _llama(1)
    parallelize_module(skeleton, mesh, tp_plan(skeleton))
    slimops.load(os.path.join(folder, "tp.safetensors"), skeleton)
    with torch.no_grad():
        return {"loaded": skeleton(ids).logits, "reference": reference(ids).logits, "other": _llama(1)(ids).logits}


def test_tensor_parallel_model_saves_the_one_process_file_and_loads_into_shards(runs):
    tmp_path, both = runs
    ranks = [r["tp"] for r in both]
    slimops.save(_llama(0), tmp_path / "one.safetensors")
    got, want = load_file(tmp_path / "tp.safetensors"), load_file(tmp_path / "one.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    for r in ranks:
        assert not torch.allclose(r["other"], r["reference"]), "the skeleton's own values would pass"
        torch.testing.assert_close(r["loaded"], r["reference"], rtol=1e-4, atol=1e-5)
