"""The suite's numbers hold on CPUs with narrower vector units than this one's.

torch picks kernels by the CPU it runs on: ATen's own by its widest vector unit (AVX-512, AVX2 or
scalar), MKL and oneDNN theirs, OpenBLAS and NumPy (the scaling fits) theirs. Two computations of
one number (a packed batch and its documents alone, the chunked and the plain loss, a fit and its
vectorised objective) agree to rounding on every CPU, but which last bits they get depends on those
kernels: a tolerance read off one machine fails on another (rel=1e-7, below fp32's epsilon, failed
on an AMD EPYC, whose MKL runs AVX2 code). Each tolerance is set from the dtype and the reduction
order instead (docs/testing/tolerances.md); here the in-process numeric tests run again in a pytest
of their own with narrower kernels forced: AVX2 (the EPYC's) and the scalar default. The variables
can only lower what the CPU has, so on a CPU without AVX-512 the first run is its native one.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.helpers import REPO, clean_environment

NARROWER = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "OPENBLAS_CORETYPE": "Nehalem", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
}
# In-process tests that compare two computations of floating-point numbers (the quick ones of each file).
NUMERIC = ["tests/model", "tests/checkpoint/test_hf.py", "tests/inference/test_generate.py",
           "tests/finetune/test_data.py", "tests/data/test_masking.py", "tests/scaling/test_parametric.py"]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 vector widths")
@pytest.mark.parametrize("width", list(NARROWER))
def test_numeric_tests_pass_with_narrower_kernels(width, tmp_path):
    env = {**clean_environment(), **NARROWER[width]}
    capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                env=env, capture_output=True, text=True, timeout=120)
    assert capability.stdout.strip() in ({"AVX2", "DEFAULT"} if width == "avx2" else {"DEFAULT"}), capability
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                             f"--basetemp={tmp_path / 'pytest'}", *NUMERIC], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"with {width} kernels:\n{result.stdout[-4000:]}"
