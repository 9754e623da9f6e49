"""Mixed precision against torch on the CPU: autocast op lists and GradScaler behaviour."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _copy_linear(t_lin, e_lin):
    e_lin.weight.data = ember.tensor(t_lin.weight.detach().numpy())
    e_lin.bias.data = ember.tensor(t_lin.bias.detach().numpy())


def test_autocast_dtypes_match_torch():
    t_lin = torch.nn.Linear(8, 4)
    e_lin = ember.nn.Linear(8, 4)
    _copy_linear(t_lin, e_lin)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    results = {}
    for m, lin in ((torch, t_lin), (ember, e_lin)):
        xt = m.tensor(x)
        with m.autocast("cpu", dtype=m.bfloat16):
            y = lin(xt)
            mm = xt @ xt.t()
            s = m.softmax(y, dim=-1)
            l = m.nn.functional.cross_entropy(y, m.tensor([0, 1, 2, 3, 0]))
            e = m.exp(y)
            added = y + 1
        results[m.__name__] = [str(v.dtype).split(".")[-1] for v in (y, mm, s, l, e, added)]
        results[m.__name__ + "_y"] = y.float().detach().numpy()
    assert results["ember"] == results["torch"]
    np.testing.assert_allclose(results["ember_y"], results["torch_y"], rtol=2e-2, atol=2e-2)


def test_autocast_gradients_come_back_in_param_dtype_and_match_torch():
    t_lin = torch.nn.Linear(8, 4)
    e_lin = ember.nn.Linear(8, 4)
    _copy_linear(t_lin, e_lin)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    for m, lin in ((torch, t_lin), (ember, e_lin)):
        with m.autocast("cpu", dtype=m.bfloat16):
            loss = m.nn.functional.mse_loss(lin(m.tensor(x)).float(), m.zeros(5, 4))
        loss.backward()
    assert e_lin.weight.grad.dtype is ember.float32
    np.testing.assert_allclose(e_lin.weight.grad.numpy(), t_lin.weight.grad.numpy(),
                               rtol=3e-2, atol=3e-2)


def test_autocast_disabled_and_nested():
    x = ember.randn(3, 3)
    with ember.autocast("cpu", dtype=ember.bfloat16):
        assert (x @ x).dtype is ember.bfloat16
        with ember.autocast("cpu", enabled=False):
            assert (x @ x).dtype is ember.float32
        assert ember.amp.is_autocast_enabled("cpu")
    assert not ember.amp.is_autocast_enabled("cpu")
    assert (x @ x).dtype is ember.float32

    @ember.autocast("cpu")
    def f(a):
        return a @ a
    assert f(x).dtype is ember.bfloat16
    with pytest.raises(RuntimeError):
        ember.autocast("tpu")


def _scaler_run(m, values, init_scale=4.0, growth_interval=2):
    p = m.nn.Parameter(m.tensor([1.0, 2.0]))
    opt = m.optim.SGD([p], lr=0.1)
    scaler = m.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    scales, params = [], []
    for v in values:
        opt.zero_grad()
        loss = (p * m.tensor(v)).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        params.append(p.detach().numpy().copy().tolist())
    return scales, params


def test_grad_scaler_matches_torch_including_skipped_steps():
    values = [[1.0, 1.0], [float("inf"), 1.0], [0.5, 2.0], [1.0, 1.0], [float("nan"), 0.0],
              [1.0, 3.0], [2.0, 2.0], [1.0, 1.0]]
    t_scales, t_params = _scaler_run(torch, values)
    e_scales, e_params = _scaler_run(ember, values)
    assert e_scales == t_scales
    np.testing.assert_allclose(e_params, t_params, rtol=1e-6)


def test_grad_scaler_state_and_errors():
    s = ember.amp.GradScaler("cpu", init_scale=8.0)
    p = ember.nn.Parameter(ember.ones(2))
    opt = ember.optim.SGD([p], lr=0.1)
    s.scale((p * ember.tensor([float("inf"), 1.0])).sum()).backward()
    s.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        s.unscale_(opt)
    s.step(opt)
    s.update()
    assert s.skipped_steps == 1 and s.get_scale() == 4.0
    state = s.state_dict()
    s2 = ember.amp.GradScaler("cpu")
    s2.load_state_dict(state)
    assert s2.get_scale() == 4.0
    with pytest.raises(ValueError):
        ember.amp.GradScaler("cpu", growth_factor=0.5)
    if not ember.cuda.is_available():
        with pytest.warns(UserWarning):
            assert not ember.amp.GradScaler("cuda").is_enabled()
