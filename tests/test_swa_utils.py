"""ember.optim.swa_utils against torch.optim.swa_utils: averaged weights, SWALR, update_bn."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
try:
    import ember.nn  # noqa: F401
    from ember.optim import swa_utils  # noqa: F401
except Exception as exc:  # pragma: no cover - nn is built in parallel
    pytest.skip(f"ember.nn is not importable yet: {exc}", allow_module_level=True)


def _model(lib, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = lib.nn.Sequential(lib.nn.Linear(3, 4), lib.nn.Linear(4, 2)).double()
    with lib.no_grad():
        for p in m.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape))))
    return m


def _flat(module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in module.parameters()])


def _averagers(lib):
    su = lib.optim.swa_utils
    return {
        "swa": lambda m: su.AveragedModel(m),
        "ema_multi": lambda m: su.AveragedModel(m, multi_avg_fn=su.get_ema_multi_avg_fn(0.9)),
        "ema": lambda m: su.AveragedModel(m, avg_fn=su.get_ema_avg_fn(0.8)),
        "swa_multi": lambda m: su.AveragedModel(m, multi_avg_fn=su.get_swa_multi_avg_fn()),
        "swa_fn": lambda m: su.AveragedModel(m, avg_fn=su.get_swa_avg_fn()),
        "buffers": lambda m: su.AveragedModel(m, use_buffers=True),
    }


def _train(lib, anneal_strategy: str = "cos", anneal_epochs: int = 5) -> tuple:
    m = _model(lib)
    avgs = {k: make(m) for k, make in _averagers(lib).items()}
    opt = lib.optim.SGD(m.parameters(), lr=0.05, momentum=0.5)
    sched = lib.optim.swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=anneal_epochs,
                                      anneal_strategy=anneal_strategy)
    rng = np.random.default_rng(1)
    lrs = []
    for _ in range(15):
        x = lib.tensor(rng.standard_normal((5, 3)))
        loss = (m(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
        for a in avgs.values():
            a.update_parameters(m)
    x = lib.tensor(rng.standard_normal((4, 3)))
    outs = {k: a(x).detach().numpy() for k, a in avgs.items()}
    return ({k: _flat(a) for k, a in avgs.items()}, lrs,
            {k: int(a.n_averaged) for k, a in avgs.items()}, outs)


@pytest.mark.parametrize("strategy,epochs", [("cos", 5), ("linear", 3), ("cos", 0)])
def test_averaged_models_and_swalr_match_torch(strategy, epochs):
    t = _train(torch, strategy, epochs)
    e = _train(ember, strategy, epochs)
    for k in t[0]:
        np.testing.assert_allclose(e[0][k], t[0][k], rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(e[3][k], t[3][k], rtol=1e-6, err_msg=k)
    assert e[1] == t[1]
    assert e[2] == t[2]


def test_averaged_model_structure():
    m = _model(ember)
    avg = ember.optim.swa_utils.AveragedModel(m)
    assert avg.n_averaged.dtype is ember.int64 and int(avg.n_averaged) == 0
    assert "n_averaged" in dict(avg.named_buffers())
    assert avg.module is not m
    assert all(a is not b for a, b in zip(avg.parameters(), m.parameters()))
    with pytest.raises(AssertionError, match="Only one of avg_fn and multi_avg_fn"):
        ember.optim.swa_utils.AveragedModel(m, avg_fn=lambda *a: a[0],
                                            multi_avg_fn=lambda *a: None)


def test_avg_fn_errors_match_torch():
    for name in ("get_ema_avg_fn", "get_ema_multi_avg_fn"):
        with pytest.raises(ValueError) as t_err:
            getattr(torch.optim.swa_utils, name)(1.5)
        with pytest.raises(ValueError) as e_err:
            getattr(ember.optim.swa_utils, name)(1.5)
        assert str(e_err.value) == str(t_err.value)


def test_swalr_errors_and_state_dict():
    p = ember.zeros(2, requires_grad=True)
    opt = ember.optim.SGD([p], lr=0.1)
    su = ember.optim.swa_utils
    with pytest.raises(ValueError, match="anneal_strategy must be one of"):
        su.SWALR(opt, 0.05, anneal_strategy="x")
    with pytest.raises(ValueError, match="anneal_epochs must be equal or greater than 0"):
        su.SWALR(opt, 0.05, anneal_epochs=-1)
    sched = su.SWALR(opt, 0.05, anneal_epochs=4, anneal_strategy="linear")
    sd = sched.state_dict()
    assert "anneal_func" not in sd and sd["_anneal_strategy"] == "linear"
    sched2 = su.SWALR(opt, 0.05)
    sched2.load_state_dict(sd)
    assert sched2.anneal_func(0.25) == 0.25


def test_update_bn_matches_torch():
    if not hasattr(ember.nn, "BatchNorm1d"):
        pytest.skip("ember.nn.BatchNorm1d is not available yet")
    rng = np.random.default_rng(3)
    data = [rng.standard_normal((8, 3)) for _ in range(5)]
    stats = []
    for lib in (torch, ember):
        m = lib.nn.Sequential(lib.nn.Linear(3, 4), lib.nn.BatchNorm1d(4)).double()
        with lib.no_grad():
            for p, v in zip(m.parameters(), [np.ones((4, 3)) * 0.3, np.zeros(4), np.ones(4),
                                              np.zeros(4)]):
                p.copy_(lib.tensor(v))
        m.eval()
        loader = [(lib.tensor(x), 0) for x in data]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib.optim.swa_utils.update_bn(loader, m)
        bn = m[1]
        assert not m.training and bn.momentum == 0.1
        stats.append((bn.running_mean.numpy().copy(), bn.running_var.numpy().copy(),
                      int(bn.num_batches_tracked)))
    np.testing.assert_allclose(stats[1][0], stats[0][0], rtol=1e-6)
    np.testing.assert_allclose(stats[1][1], stats[0][1], rtol=1e-6)
    assert stats[1][2] == stats[0][2]


def test_update_bn_without_batchnorm_is_a_no_op():
    m = _model(ember)
    before = _flat(m)
    ember.optim.swa_utils.update_bn([ember.ones(2, 3)], m)
    np.testing.assert_array_equal(_flat(m), before)
