"""``slimops bench``: microbenchmarks of slimops' ops against the baselines a user would pick.

Run it with ``slimops bench [--suite quantize] [--quick] [--device cpu|cuda]
[--json PATH] [--providers ...]``, or from Python::

    from slimops.bench import load_suites, run_suite, print_table
    rows = run_suite(load_suites()["quantize"], "cuda", quick=True)
    print_table(rows)

Each row is a flat dict (one JSON object) with:

* ``suite``, ``op``, ``params`` (the variant, e.g. ``"axis=0 asym"``), ``provider``,
  ``shape`` (list), ``dtype``;
* ``device`` (``cpu``/``cuda``), ``device_name``, ``versions`` (slimops, torch,
  triton, cuda, python), ``date`` (ISO 8601 with offset), ``timer``, ``threads`` (CPU:
  torch's threads when the row was timed);
* ``status``: ``ok``, ``skipped`` (provider unavailable here; ``reason`` says why)
  or ``error`` (it raised; ``reason`` holds the exception);
* ``median_us``; ``bytes`` (compulsory bytes read + written) and ``gbps``;
  ``flops`` and ``tflops`` (null for memory-bound ops);
* ``baseline`` (the suite's baseline provider) and ``speedup_vs_baseline``
  (baseline time / this time, same run); ``frac_of_copy_bw`` (GPU: this GB/s
  over the ``torch-copy`` row's, a device copy of the same bytes, same run);
* ``extra``: what the provider measured besides time (the ``cpu`` suite: ``sqnr_db``,
  ``isa``), or null.
* ``target`` and ``target_met`` (only in rows of a case that carries an issue's target,
  e.g. the ``decode`` suite): the target's wording, and for slimops rows true / false,
  or null when a number it needs was not measured (no copy row on a CPU).
"""

from slimops.bench.harness import Case, Provider, Suite, Unavailable, print_table, run_suite, write_json
from slimops.bench.suites import load_suites

__all__ = ["Case", "Provider", "Suite", "Unavailable", "load_suites", "print_table", "run_suite", "write_json"]
