"""Autotuning of the Triton GEMMs in this folder, with its results kept on disk.

The rest of what the GEMMs share (M buckets, config tables, program mapping,
epilogues) is in :mod:`slimops.kernels._gemm`.
"""

from __future__ import annotations

import inspect

import triton

# triton.autotune(cache_results=...) exists from Triton 3.4 on (pyproject allows 3.2).
_AUTOTUNE_CACHES = "cache_results" in inspect.signature(triton.autotune).parameters


def autotune(configs: list[triton.Config], key: list[str], prune_configs_by: dict | None = None):
    """``triton.autotune`` that keeps its results on disk, so a second process does not retune.

    With ``cache_results=True`` (Triton >= 3.4; older ones tune in every process),
    the first process to tune a kernel for a key writes every pruned config's
    timing to ``<fn name>.autotune.json`` in Triton's cache directory,
    ``$TRITON_CACHE_DIR`` (default ``~/.triton/cache``). Its subdirectory is a hash of:
    the Triton version and build; the compile target (on CUDA, the GPU architecture,
    e.g. 90 for sm_90, and the ptxas version); the kernel's source and that of the
    functions it calls; the cache-invalidating ``TRITON_*`` environment variables;
    the tuning key (the values of ``key``, i.e. the shapes and M bucket, plus the
    dtype of every tensor argument); and the pruned config list.

    So another architecture, shape, dtype, config table or kernel source tunes
    again. NOTE: cards of one architecture share results (an H100's tuning is
    reused on an H200). Delete the directory, or point ``TRITON_CACHE_DIR``
    elsewhere, to retune. Under ``TRITON_INTERPRET=1`` Triton never caches.

    Args:
        configs: the candidate ``triton.Config`` objects.
        key: kernel argument names whose values select a tuned config.
        prune_configs_by: as for ``triton.autotune`` (``{"early_config_prune": fn}``).
    """
    extra = {"cache_results": True} if _AUTOTUNE_CACHES else {}
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_configs_by, **extra)

