"""CUDA autocast's per-op dtypes against torch's on the same GPU.

Each op runs under ``autocast("cuda", bfloat16)`` in ember and in torch (CUDA build) from
float32 and from bfloat16 inputs; the output dtypes must agree (ember/amp/autocast_mode.py's
``LOWER`` and ``FP32`` lists follow torch's lower-precision, fp32 and fp32-set-opt-dtype
lists; ops on none keep their input dtype). Marked ``cuda``; skipped without a CUDA torch.
"""
from __future__ import annotations

import pytest

import ember
from test_amp_lists import _ops as _cpu_ops, autocast_outputs, dtype_name

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs torch with CUDA (the GPU machine's)", allow_module_level=True)


def _ops(m, device="cuda"):
    F = m.nn.functional
    return _cpu_ops(m, device) | {
        "mean": lambda x: x.mean(), "mean dim": lambda x: x.mean(1),
        "var": lambda x: x.var(1), "std": lambda x: x.std(), "sum": lambda x: x.sum(1),
        "prod": lambda x: x.prod(1), "cumsum": lambda x: x.cumsum(1),
        "softmax": lambda x: F.softmax(x, 1), "log_softmax": lambda x: F.log_softmax(x, 1),
        "softmin": lambda x: F.softmin(x, 1), "logsumexp": lambda x: x.logsumexp(1),
        "exp": lambda x: x.exp(), "log": lambda x: x.abs().log(), "pow": lambda x: x.pow(2),
        "relu": lambda x: F.relu(x), "gelu": lambda x: F.gelu(x), "add": lambda x: x + x,
        "layer_norm": lambda x: F.layer_norm(x, (x.shape[1],)),
        "group_norm": lambda x: F.group_norm(x, 2),
        "normalize": lambda x: F.normalize(x, dim=1),
        "vector_norm": lambda x: m.linalg.vector_norm(x),
        "matmul": lambda x: x @ x.t(), "linear": lambda x: F.linear(x, x),
        "mse_loss": lambda x: F.mse_loss(x, x * 0.5),
        "cross_entropy": lambda x: F.cross_entropy(x, m.zeros(x.shape[0], dtype=m.int64,
                                                               device="cuda")),
        "cosine_similarity": lambda x: F.cosine_similarity(x, x * 2),
        "adaptive_avg_pool2d": lambda x: F.adaptive_avg_pool2d(x.reshape(2, 4, 2, 2), 1),
        "avg_pool2d": lambda x: F.avg_pool2d(x.reshape(2, 4, 2, 2), 2),
        "conv2d": lambda x: F.conv2d(x.reshape(2, 4, 2, 2), x.reshape(2, 4, 2, 2)),
    }


@pytest.mark.parametrize("name", sorted(_ops(ember)))
@pytest.mark.parametrize("src", ["float32", "bfloat16"])
def test_autocast_output_dtype_matches_torch(name, src):
    e, t = autocast_outputs(name, src, "cuda", _ops, skip_torch_refusal=True)
    assert dtype_name(e) == dtype_name(t), (name, src, dtype_name(e), dtype_name(t))
