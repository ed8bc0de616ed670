"""bench/gpu_check.sh, checked on the CPU: its syntax, its plan, and that every Python command it calls
accepts the arguments it is given (``DRY_RUN=1`` prints the commands instead of running them)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
# Most valuable per device second first: issue 12's and 11's measurements, then the rest.
ORDER = ["build", "info", "bad-input", "libstdcxx", "decode-sweep", "bench-decode", "fuzz-cuda", "never-slower",
         "llama-decode", "launch-overhead", "pytest-gpu", "bsi8-sweep", "ddp-example", "bench-suites", "extras"]


def _dry(tmp_path, **env):
    full = {**os.environ, "OUT": str(tmp_path), "DRY_RUN": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = _dry(out)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, out


def test_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_plan_lists_the_steps_in_order_within_the_budget(dry):
    stdout, out = dry
    plan = re.findall(r"^  (\S+)\s+expect\s+(\d+)s\s+limit\s+(\d+)s\s+\(total\s+(\d+)s\)$", stdout, re.M)
    assert [name for name, *_ in plan] == ORDER
    budget = int(re.search(r"budget (\d+)s", stdout).group(1))
    assert budget <= 490  # the device allows 600 s per command: a margin of 110 s
    assert int(plan[-1][3]) <= budget, "the default steps' expected seconds must fit the budget"
    assert all(int(expect) <= int(limit) for _, expect, limit, _ in plan)
    assert "exceed the budget" not in stdout
    assert (out / "gpu_check.log").read_text() == stdout


def _commands(stdout):
    """(step, argv) of every DRY line whose command is a plain Python program (not a bash -c or -c snippet)."""
    for step, cmd in re.findall(r"^DRY \[(\S+)\] \(limit \d+s\): (.*)$", stdout, re.M):
        if cmd.startswith("python3 ") and not cmd.startswith(("python3 -c ", "python3 -m pip ")):
            yield step, shlex.split(cmd)


def test_every_python_command_accepts_its_arguments(dry):
    stdout, _ = dry
    commands = dict(_commands(stdout))
    assert {"info", "bench-decode", "fuzz-cuda", "never-slower", "llama-decode", "launch-overhead"} <= set(commands)
    for step, argv in commands.items():
        # The program (and its subcommand), then the options it was given.
        n = 3 if argv[1] == "-m" else 2
        if argv[1:3] == ["-m", "slimops"]:
            n = 4
        prog = [sys.executable, *argv[1:n]]
        help_text = subprocess.run([*prog, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert help_text.returncode == 0, (step, help_text.stderr)
        for flag in (a for a in argv[n:] if a.startswith("--")):
            assert flag in help_text.stdout, f"[{step}] {' '.join(prog)} has no option {flag}"
    # The decode suite and the providers gpu_check names exist.
    bench = commands["bench-decode"]
    from slimops.bench.suites import load_suites

    suite = load_suites()[bench[bench.index("--suite") + 1]]
    providers = bench[bench.index("--providers") + 1:]
    assert set(providers) <= {p.name for p in suite.providers}
    assert "--quick" not in bench  # the headline table has every M of the issue
    assert Path(ROOT, bench[bench.index("--json") + 1]).name == "bench-decode.json"


@pytest.mark.parametrize(("step", "script"), [("decode-sweep", "bench/decode_sweep.py"),
                                              ("bsi8-sweep", "bench/block_sparse_int8_sweep.py")])
def test_other_engineers_sweeps_run_only_when_present(dry, step, script):
    stdout, _ = dry
    if (ROOT / script).exists():
        line = re.search(rf"^DRY \[{step}\] .*$", stdout, re.M).group(0)
        assert f"python3 {script} --json" in line
        assert "--json" in subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                                          cwd=ROOT, timeout=120).stdout
    else:
        assert f"=== [{step}] SKIPPED: {script} is not in this checkout" in stdout


def test_steps_knob_runs_only_those(tmp_path):
    r = _dry(tmp_path, STEPS="bench-decode llama-decode")
    assert r.returncode == 0, r.stderr
    assert re.findall(r"^DRY \[(\S+)\]", r.stdout, re.M) == ["bench-decode", "llama-decode"]
    longer = _dry(tmp_path, STEPS="llama-decode", LIMIT_llama_decode="300")
    assert "DRY [llama-decode] (limit 300s):" in longer.stdout and "--budget-s 290" in longer.stdout
    bad = _dry(tmp_path, STEPS="bench-decode nope")
    assert bad.returncode != 0 and "unknown step 'nope'" in bad.stderr + bad.stdout


def test_launch_overhead_has_one_decode_layer_per_format(tmp_path):
    out = tmp_path / "launch.json"
    run = subprocess.run([sys.executable, "bench/launch_overhead.py", "--device", "cpu", "--layer-shape", "256:384",
                          "--m", "1", "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    import json

    from slimops.bench.suites import decode

    rows = json.loads(out.read_text())["rows"]
    formats = [f for f in decode.FORMATS if f != decode.MASKED]
    assert [r["op"] for r in rows] == [f"{f} 256->384 M=1" for f in ["bf16 nn.Linear", *formats]]
    assert all(r["eager_us"] > 0 and r["graph_us"] is None for r in rows)  # no CUDA graph on the CPU
