"""CPU autocast's per-op output dtypes against torch's (CPU build), including the functions
ember writes in other ops (losses, addmv, cdist ...), which autocast reaches through
``ember.amp.autocast_mode.composite`` instead of a registered op. The CUDA lists are checked
against torch's CUDA build in tests/test_cuda_autocast_lists.py."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _ops(m, device="cpu"):
    F = m.nn.functional

    def idx(*s):
        return m.zeros(*s, dtype=m.int64, device=device)
    return {
        "mse_loss": lambda x: F.mse_loss(x, x * 0.5),
        "mse_loss none": lambda x: F.mse_loss(x, x * 0.5, reduction="none"),
        "l1_loss": lambda x: F.l1_loss(x, x * 0.5),
        "smooth_l1_loss": lambda x: F.smooth_l1_loss(x, x * 0.5),
        "huber_loss": lambda x: F.huber_loss(x, x * 0.5),
        "kl_div": lambda x: F.kl_div(x, x.abs(), reduction="batchmean"),
        "soft_margin_loss": lambda x: F.soft_margin_loss(x, x.sign()),
        "bce_with_logits": lambda x: F.binary_cross_entropy_with_logits(x, x.sigmoid()),
        "binary_cross_entropy": lambda x: F.binary_cross_entropy(x.sigmoid(), x.sigmoid()),
        "poisson_nll_loss": lambda x: F.poisson_nll_loss(x, x.abs()),
        "margin_ranking_loss": lambda x: F.margin_ranking_loss(x[:, 0], x[:, 1],
                                                               x[:, 2].sign()),
        "hinge_embedding_loss": lambda x: F.hinge_embedding_loss(x, x.sign()),
        "cosine_embedding_loss": lambda x: F.cosine_embedding_loss(x, x * 2, x[:, 0].sign()),
        "triplet_margin_loss": lambda x: F.triplet_margin_loss(x, x * 2, x * 3),
        "multi_margin_loss": lambda x: F.multi_margin_loss(x, idx(8)),
        "multilabel_margin_loss": lambda x: F.multilabel_margin_loss(x, idx(8, 4)),
        "nll_loss": lambda x: F.nll_loss(x, idx(8)),
        "addmm": lambda x: m.addmm(x[:4], x[:4], x[:4]),
        "addmv": lambda x: m.addmv(x[:, 0], x, x[0]),
        "addr": lambda x: m.addr(x, x[:, 0], x[0]),
        "baddbmm": lambda x: m.baddbmm(*(x.reshape(2, 4, 4),) * 3),
        "addbmm": lambda x: m.addbmm(x[:4], x.reshape(2, 4, 4), x.reshape(2, 4, 4)),
        "chain_matmul": lambda x: m.chain_matmul(x[:4], x[:4], x[:4]),
        "multi_dot": lambda x: m.linalg.multi_dot([x[:4], x[:4], x[:4]]),
        "cdist": lambda x: m.cdist(x, x), "prelu": lambda x: F.prelu(x, x[0, :1]),
        "softplus": lambda x: F.softplus(x), "softmin": lambda x: F.softmin(x, 1),
        "normalize": lambda x: F.normalize(x), "cosine_similarity": lambda x:
        F.cosine_similarity(x, x * 2),
        "mean": lambda x: x.mean(), "matmul": lambda x: x @ x.t(),
        "softmax": lambda x: F.softmax(x, 1), "sum": lambda x: x.sum(),
        "layer_norm": lambda x: F.layer_norm(x, (4,)), "exp": lambda x: x.exp(),
        "einsum": lambda x: m.einsum("ij,kj->ik", x, x),
        "bilinear": lambda x: F.bilinear(x, x, x.reshape(2, 4, 4)),
    }


def autocast_outputs(name, src, device, ops=_ops, skip_torch_refusal=False):
    """``(ember's, torch's)`` output of op ``name`` on an (8, 4) ``src`` tensor on
    ``device`` under bf16 autocast; with ``skip_torch_refusal`` a case torch refuses is
    skipped (binary_cross_entropy is banned under CUDA autocast)."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    out = {}
    for m in (torch, ember):
        t = m.tensor(x, device=device).to(getattr(m, src))
        with m.autocast(device, dtype=m.bfloat16):
            try:
                out[m.__name__] = ops(m, device)[name](t)
            except (RuntimeError, NotImplementedError) as exc:
                if m is torch and skip_torch_refusal:
                    pytest.skip(f"torch: {exc}"[:120])
                raise
    return out["ember"], out["torch"]


def dtype_name(t) -> str:
    return str(t.dtype).split(".")[-1]


@pytest.mark.parametrize("name", sorted(_ops(ember)))
@pytest.mark.parametrize("src", ["float32", "bfloat16"])
def test_cpu_autocast_dtype_and_values_match_torch(name, src):
    e, t = autocast_outputs(name, src, "cpu")
    assert dtype_name(e) == dtype_name(t), (name, src)
    np.testing.assert_allclose(e.float().numpy(), t.detach().float().numpy(),
                               rtol=2e-2, atol=2e-2)


def test_composite_decorator_rejects_unlisted_names():
    from ember.amp.autocast_mode import composite
    with pytest.raises(ValueError, match="no autocast list"):
        composite("not_an_op")
