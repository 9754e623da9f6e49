"""ember's own CUDA kernels compile: every NVRTC kernel family, each kernel instantiated with
the template arguments ember launches it with, compiled to PTX for sm_90 by nvcc. Needs no
GPU (skipped where nvcc is absent), so a source error shows up on the CPU machines too,
before a device run."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess

import pytest

from ember.backend.cuda_ops import _nvrtc as K

_MODULES = ("_norm_rows", "kernels_activation", "kernels_batchnorm", "kernels_dropout",
            "kernels_embedding", "kernels_loss", "kernels_norm", "kernels_optim",
            "kernels_pointwise", "kernels_pool", "kernels_softmax")
_HALF = ("float", "bf16_t", "half_t")
# family -> the template arguments its launches use
_TARGS = {
    "norm_rows": [f"{t}, {nv}" for t in _HALF for nv in (1, 2, 4)],
    "activation": list(_HALF), "dropout": list(_HALF), "loss": list(_HALF),
    "norm": list(_HALF), "pointwise": list(_HALF), "pool": list(_HALF),
    "softmax": list(_HALF),
    "batchnorm": [f"{t}, float" for t in _HALF] + ["bf16_t, bf16_t", "half_t, half_t"],
    "batchnorm_coop": [f"{t}, float" for t in _HALF] + ["bf16_t, bf16_t", "half_t, half_t"],
    "embedding": [f"{t}, {i}" for t in _HALF for i in ("long long", "int")],
    "embedding_check": [f"{i}, {t}" for t in _HALF for i in ("long long", "int")],
    "loss_small": [f"{t}, {o}" for t in _HALF for o in sorted({t, "float"})],
    "optim": ["float, float", "bf16_t, float", "half_t, float", "double, double"],
    "cast": [f"{a}, {b}" for a in _HALF for b in _HALF if a != b],
    "optim_cast": ["float, bf16_t", "float, half_t"],
    "pointwise_mixed": [f"{a}, {b}" for a in _HALF for b in _HALF
                        if a != b and "float" in (a, b)],
}


def _families() -> list:
    for m in _MODULES:
        importlib.import_module(f"ember.backend.cuda_ops.{m}")
    return sorted(K._SOURCES)


def test_every_family_has_template_arguments() -> None:
    assert set(_families()) == set(_TARGS)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
@pytest.mark.parametrize("family", sorted(_TARGS))
def test_kernel_family_compiles(family: str, tmp_path) -> None:
    _families()
    source, kernels = K._SOURCES[family]
    keep = ", ".join(f"(void*)&{k}<{t}>" for k in kernels for t in _TARGS[family])
    path = os.path.join(tmp_path, f"{family}.cu")
    with open(path, "w") as f:
        f.write(K.PRELUDE + source + f"\nvoid* _instances[] = {{{keep}}};\n")
    r = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-ptx", path, "-o",
                        os.path.join(tmp_path, f"{family}.ptx")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
