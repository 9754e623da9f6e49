"""ember.optim against torch.optim: trajectories, state dicts, validation, hooks, base API."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import ember
import ember.optim as eoptim

torch = pytest.importorskip("torch")

# (optimizer, kwargs) pairs; each runs 100 steps of a small tanh model in both frameworks.
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, foreach=False, fused=None, differentiable=False)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, amsgrad=True, weight_decay=0.3, maximize=True)),
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.8, 0.99))),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9, alpha=0.9)),
    ("Rprop", dict(lr=0.01)),
    ("Rprop", dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(1e-4, 0.5), maximize=True)),
    ("ASGD", dict(lr=0.01)),
    ("ASGD", dict(lr=0.05, t0=20, lambd=1e-3, alpha=0.5, weight_decay=0.1)),
]
NAMES = sorted({name for name, _ in CONFIGS})


def _data(seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal((6, 4)) * 0.5, rng.standard_normal((4,)) * 0.1,
            rng.standard_normal((4, 2)) * 0.5]
    batches = [(rng.standard_normal((8, 6)), rng.standard_normal((8, 2))) for _ in range(100)]
    return init, batches


def _loss(lib, params, x, y):
    w1, b1, w2 = params
    h = lib.tanh(lib.tensor(x, dtype=w1.dtype) @ w1 + b1)
    return ((h @ w2 - lib.tensor(y, dtype=w1.dtype)) ** 2).mean()


def _train(lib, opt, params, batches) -> list:
    # maximize=True climbs the objective: climb the negated loss so runs stay bounded
    sign = -1.0 if opt.defaults.get("maximize") else 1.0
    out = []
    for x, y in batches:
        opt.zero_grad()
        (sign * _loss(lib, params, x, y)).backward()
        opt.step()
        out.append([p.detach().numpy().copy() for p in params])
    return out


def _leaves(lib, init) -> list:
    return [lib.tensor(a, dtype=lib.float64, requires_grad=True) for a in init]


def _close(a: list, b: list, rtol: float = 1e-6, atol: float = 1e-10) -> None:
    for step, (xs, ys) in enumerate(zip(a, b)):
        for x, y in zip(xs, ys):
            np.testing.assert_allclose(y, x, rtol=rtol, atol=atol, err_msg=f"step {step}")


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in
                                                      enumerate(CONFIGS)])
def test_trajectory_matches_torch(name, kwargs):
    init, batches = _data()
    tp, ep = _leaves(torch, init), _leaves(ember, init)
    t_traj = _train(torch, getattr(torch.optim, name)(tp, **kwargs), tp, batches)
    e_traj = _train(ember, getattr(eoptim, name)(ep, **kwargs), ep, batches)
    _close(t_traj, e_traj)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adagrad", "ASGD",
                                  "RMSprop"])
def test_float32_trajectory_and_state_dtypes(name):
    """float32 params, float32 scalar state ('step', NAdam's 'mu_product', ASGD's 'eta')."""
    init, batches = _data(1)
    kw = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    tp = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in init]
    ep = [ember.tensor(a, dtype=ember.float32, requires_grad=True) for a in init]
    topt, eopt = getattr(torch.optim, name)(tp, **kw), getattr(eoptim, name)(ep, **kw)
    _close(_train(torch, topt, tp, batches[:30]), _train(ember, eopt, ep, batches[:30]),
           rtol=2e-4, atol=1e-5)
    ts, es = topt.state_dict()["state"], eopt.state_dict()["state"]
    assert ts.keys() == es.keys()
    for k in ts:
        assert ts[k].keys() == es[k].keys()
        for key, v in ts[k].items():
            assert str(v.dtype).split(".")[1] == str(es[k][key].dtype).split(".")[1], key
            assert tuple(v.shape) == tuple(es[k][key].shape), key


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.01, momentum=0.9)),
                                         ("Adam", dict(lr=0.01, amsgrad=True)),
                                         ("AdamW", dict(lr=0.01)), ("RMSprop", dict(lr=0.01,
                                                                                    centered=True)),
                                         ("Adagrad", dict(lr=0.1)), ("Rprop", dict(lr=0.01)),
                                         ("NAdam", dict(lr=0.01)), ("RAdam", dict(lr=0.01)),
                                         ("Adamax", dict(lr=0.01)), ("Adadelta", dict()),
                                         ("ASGD", dict(lr=0.01))])
def test_complex_params(name, kwargs):
    rng = np.random.default_rng(2)
    init = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
    tp = torch.tensor(init, requires_grad=True)
    ep = ember.tensor(init, requires_grad=True)
    topt, eopt = getattr(torch.optim, name)([tp], **kwargs), getattr(eoptim, name)([ep], **kwargs)
    for _ in range(20):
        g = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
        tp.grad = torch.tensor(g)
        ep.grad = ember.tensor(g)
        topt.step()
        eopt.step()
    np.testing.assert_allclose(ep.detach().numpy(), tp.detach().numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- state dict round trips
def _to_ember(v):
    if isinstance(v, torch.Tensor):
        return ember.tensor(v.detach().numpy().copy(), dtype=getattr(ember, str(v.dtype)[6:]))
    if isinstance(v, dict):
        return {k: _to_ember(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_ember(x) for x in v)
    return v


def _to_torch(v):
    if isinstance(v, ember.Tensor):
        return torch.tensor(v.detach().numpy().copy())
    if isinstance(v, dict):
        return {k: _to_torch(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_torch(x) for x in v)
    return v


ROUND_TRIP = [(n, kw) for n, kw in CONFIGS if n in NAMES][::2] + [("Adam", dict(lr=0.01,
                                                                                amsgrad=True))]


@pytest.mark.parametrize("name,kwargs", ROUND_TRIP, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(ROUND_TRIP)])
def test_state_dict_round_trip_torch_ember_torch(name, kwargs):
    """10 steps in torch, resume 10 in ember from torch's state, 10 more back in torch.

    The oracle is torch alone with the same save/load boundaries: loading casts floating
    state to the parameter dtype (e.g. ASGD's float32 'eta' becomes float64) in both."""
    init, batches = _data(3)

    def leg(lib, mod, params, state, batch_slice, convert):
        opt = getattr(mod, name)(params, **kwargs)
        if state is not None:
            opt.load_state_dict(convert(state))
        return _train(lib, opt, params, batches[batch_slice]), opt.state_dict()

    same = lambda sd: sd  # noqa: E731
    ref_p = _leaves(torch, init)
    ref1, sd = leg(torch, torch.optim, ref_p, None, slice(0, 10), same)
    ref2, sd = leg(torch, torch.optim, ref_p, sd, slice(10, 20), same)
    ref3, _ = leg(torch, torch.optim, ref_p, sd, slice(20, 30), same)

    tp = _leaves(torch, init)
    _, sd = leg(torch, torch.optim, tp, None, slice(0, 10), same)
    ep = _leaves(ember, [p.detach().numpy() for p in tp])
    mid, sd = leg(ember, eoptim, ep, sd, slice(10, 20), _to_ember)
    tp2 = _leaves(torch, [p.detach().numpy() for p in ep])
    end, _ = leg(torch, torch.optim, tp2, sd, slice(20, 30), _to_torch)
    _close(ref2 + ref3, mid + end)


def test_state_dict_layout_matches_torch():
    init, batches = _data(4)
    tp, ep = _leaves(torch, init), _leaves(ember, init)
    groups_t = [{"params": tp[:2]}, {"params": tp[2:], "lr": 0.5}]
    groups_e = [{"params": ep[:2]}, {"params": ep[2:], "lr": 0.5}]
    topt, eopt = torch.optim.Adam(groups_t, lr=0.1), eoptim.Adam(groups_e, lr=0.1)
    _train(torch, topt, tp, batches[:2])
    _train(ember, eopt, ep, batches[:2])
    ts, es = topt.state_dict(), eopt.state_dict()
    assert ts["param_groups"] == es["param_groups"]
    assert list(ts["state"]) == list(es["state"]) == [0, 1, 2]
    assert float(es["state"][0]["step"]) == 2.0
    assert es["state"][0]["step"].dtype is ember.float32 and es["state"][0]["step"].dim() == 0


def test_load_state_dict_errors_and_casting():
    p = ember.zeros(3, dtype=ember.float64, requires_grad=True)
    opt = eoptim.Adam([p], lr=0.1)
    sd = {"state": {0: {"step": ember.tensor(3.0), "exp_avg": ember.ones(3, dtype=ember.float32),
                        "exp_avg_sq": ember.ones(3, dtype=ember.float32)}},
          "param_groups": [dict(opt.state_dict()["param_groups"][0])]}
    opt.load_state_dict(sd)
    assert opt.state[p]["exp_avg"].dtype is ember.float64  # cast to the param's dtype
    assert opt.state[p]["step"].dtype is ember.float32       # 'step' keeps its dtype
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    bad = {"state": {}, "param_groups": [dict(sd["param_groups"][0], params=[0, 1])]}
    with pytest.raises(ValueError, match="doesn't match the size"):
        opt.load_state_dict(bad)


def test_lbfgs_state_dict_round_trip():
    init, _ = _data(5)
    kwargs = dict(lr=0.5, history_size=4, max_iter=5)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)), rng.standard_normal((8, 2))

    def run(lib, opt, params, n):
        def closure():
            opt.zero_grad()
            loss = _loss(lib, params, x, y)
            loss.backward()
            return loss
        for _ in range(n):
            opt.step(closure)

    ref_p = _leaves(torch, init)
    run(torch, torch.optim.LBFGS(ref_p, **kwargs), ref_p, 4)
    tp = _leaves(torch, init)
    topt = torch.optim.LBFGS(tp, **kwargs)
    run(torch, topt, tp, 2)
    ep = _leaves(ember, [p.detach().numpy() for p in tp])
    eopt = eoptim.LBFGS(ep, **kwargs)
    eopt.load_state_dict(_to_ember(topt.state_dict()))
    run(ember, eopt, ep, 2)
    for a, b in zip(ref_p, ep):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- LBFGS
@pytest.mark.parametrize("kwargs", [dict(), dict(line_search_fn="strong_wolfe"),
                                    dict(history_size=3, max_iter=7, lr=0.5),
                                    dict(line_search_fn="strong_wolfe", tolerance_change=1e-5,
                                         max_eval=10)])
def test_lbfgs_matches_torch(kwargs):
    start = np.array([-1.5, 2.0, 0.5, -0.7])

    def rosen(lib, z):
        return (100 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2).sum()

    out = {}
    for lib, mod in ((torch, torch.optim), (ember, eoptim)):
        z = lib.tensor(start, requires_grad=True)
        opt = mod.LBFGS([z], **kwargs)
        losses = []

        def closure():
            opt.zero_grad()
            loss = rosen(lib, z)
            loss.backward()
            return loss
        for _ in range(6):
            losses.append(float(opt.step(closure).detach()))
        out[lib.__name__] = (z.detach().numpy().copy(), losses,
                             opt.state[z]["func_evals"], opt.state[z]["n_iter"])
    t, e = out["torch"], out["ember"]
    np.testing.assert_allclose(e[0], t[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(e[1], t[1], rtol=1e-6, atol=1e-12)
    assert e[2:] == t[2:]


def test_lbfgs_errors():
    p = ember.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="doesn't support per-parameter options"):
        eoptim.LBFGS([{"params": [p]}, {"params": [ember.zeros(1, requires_grad=True)]}])
    opt = eoptim.LBFGS([p], line_search_fn="bogus")

    def closure():
        opt.zero_grad()
        loss = ((p - 1) ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
        opt.step(closure)


# ---------------------------------------------------------------------- validation
BAD = [
    ("SGD", dict(lr=-1)), ("SGD", dict(lr=0.1, momentum=-0.5)),
    ("SGD", dict(lr=0.1, weight_decay=-1)), ("SGD", dict(lr=0.1, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ("Adam", dict(lr=-0.1)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.9))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-1e-3)),
    ("Adam", dict(betas=(0, 0.9))), ("Adam", dict(fused=True, foreach=True)),
    ("Adam", dict(fused=True, differentiable=True)), ("AdamW", dict(betas=(0.9, 1.5))),
    ("Adamax", dict(eps=-1.0)), ("NAdam", dict(momentum_decay=-1.0)), ("RAdam", dict(lr=-2)),
    ("Adagrad", dict(lr_decay=-1.0)), ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("Adagrad", dict(eps=-1.0)), ("Adadelta", dict(rho=1.5)), ("Adadelta", dict(eps=-1.0)),
    ("RMSprop", dict(alpha=-1.0)), ("RMSprop", dict(momentum=-1.0)), ("RMSprop", dict(eps=-1.0)),
    ("Rprop", dict(etas=(1.5, 2.0))), ("Rprop", dict(etas=(0.5, 0.9))),
    ("ASGD", dict(weight_decay=-1)), ("LBFGS", dict(lr=-1)),
]


@pytest.mark.parametrize("name,kwargs", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_invalid_hyperparameters_match_torch(name, kwargs):
    with pytest.raises(Exception) as t_err:
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(Exception) as e_err:
        getattr(eoptim, name)([ember.zeros(2, requires_grad=True)], **kwargs)
    assert type(e_err.value) is type(t_err.value)
    assert str(e_err.value) == str(t_err.value)


def test_param_list_errors_match_torch():
    cases = [
        lambda lib, p: lib.optim.SGD(p, lr=0.1),
        lambda lib, p: lib.optim.SGD([], lr=0.1),
        lambda lib, p: lib.optim.SGD([{"params": {p}}], lr=0.1),
        lambda lib, p: lib.optim.SGD([1.0], lr=0.1),
        lambda lib, p: lib.optim.SGD([p * 2], lr=0.1),
        lambda lib, p: lib.optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1),
        lambda lib, p: lib.optim.SGD([("a", p), lib.zeros(1, requires_grad=True)], lr=0.1),
    ]
    for make in cases:
        errs = []
        for lib in (torch, ember):
            with pytest.raises(Exception) as err:
                make(lib, lib.zeros(2, requires_grad=True))
            errs.append(err.value)
        assert type(errs[1]) is type(errs[0])
        assert str(errs[1]) == str(errs[0])


# ---------------------------------------------------------------------- base API
def test_param_groups_defaults_and_repr():
    a = ember.zeros(2, requires_grad=True)
    b = ember.zeros(3, requires_grad=True)
    opt = eoptim.Adam([{"params": [a]}, {"params": b, "lr": 0.5}], lr=0.1)
    ta, tb = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    topt = torch.optim.Adam([{"params": [ta]}, {"params": tb, "lr": 0.5}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["params"] == [b]
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in topt.param_groups[0].items() if k != "params"}
    assert repr(opt) == repr(topt)
    assert opt.defaults == topt.defaults


def test_add_param_group_and_duplicates():
    a = ember.zeros(2, requires_grad=True)
    opt = eoptim.SGD([a], lr=0.1, momentum=0.9)
    c = ember.zeros(1, requires_grad=True)
    opt.add_param_group({"params": c, "lr": 0.01})
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["lr"] == 0.01
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([c])
    with pytest.warns(UserWarning, match="duplicate parameters"):
        eoptim.SGD([c, c], lr=0.1)


def test_named_parameters():
    a, b = ember.zeros(2, requires_grad=True), ember.zeros(3, requires_grad=True)
    opt = eoptim.AdamW([("a", a), ("b", b)], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["a", "b"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["a", "b"]
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without"):
        opt.add_param_group({"params": [ember.zeros(1, requires_grad=True)]})


def test_zero_grad_and_skipped_params():
    a, b = ember.ones(2, requires_grad=True), ember.ones(2, requires_grad=True)
    opt = eoptim.SGD([a, b], lr=0.5)
    (a * 3).sum().backward()
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [-0.5, -0.5])
    np.testing.assert_allclose(b.detach().numpy(), [1.0, 1.0])  # no grad: skipped
    opt.zero_grad(set_to_none=False)
    assert a.grad is not None and float(a.grad.abs().sum()) == 0.0
    opt.zero_grad()
    assert a.grad is None


def test_closure_tensor_lr_and_parameter_class():
    param_cls = getattr(getattr(ember, "nn", None), "Parameter", None)
    p = param_cls(ember.ones(2)) if param_cls is not None else ember.ones(2, requires_grad=True)
    opt = eoptim.Adam([p], lr=ember.tensor(0.1))

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert float(loss) == 2.0
    tp = torch.ones(2, requires_grad=True)
    topt = torch.optim.Adam([tp], lr=torch.tensor(0.1))
    (tp ** 2).sum().backward()
    topt.step()
    np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-6)


def test_step_bumps_version_counter():
    p = ember.ones(3, requires_grad=True)
    opt = eoptim.SGD([p], lr=0.1)
    y = p * p          # saves p for backward
    p.grad = ember.ones(3)
    opt.step()         # in-place write to p
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_step_hooks_local_and_global():
    p = ember.ones(2, requires_grad=True)
    opt = eoptim.SGD([p], lr=0.1)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, args, kw: calls.append(("pre", o is opt)))
    h2 = opt.register_step_post_hook(lambda o, args, kw: calls.append(("post", o is opt)))
    g1 = eoptim.optimizer.register_optimizer_step_pre_hook(lambda o, a, k: calls.append("gpre"))
    g2 = eoptim.optimizer.register_optimizer_step_post_hook(lambda o, a, k: calls.append("gpost"))
    p.grad = ember.ones(2)
    opt.step()
    assert calls == ["gpre", ("pre", True), ("post", True), "gpost"]
    for h in (h1, h2, g1, g2):
        h.remove()
    calls.clear()
    opt.step()
    assert calls == []

    # a pre hook may replace the arguments
    seen = []
    opt.register_step_pre_hook(lambda o, args, kw: (args, {"closure": lambda: seen.append(1)}))
    opt.step()
    assert seen == [1]
    opt._optimizer_step_pre_hooks.clear()
    opt.register_step_pre_hook(lambda o, args, kw: 5)
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_state_dict_hooks():
    p = ember.ones(2, requires_grad=True)
    opt = eoptim.Adam([p], lr=0.1)
    order = []
    opt.register_state_dict_pre_hook(lambda o: order.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: dict(sd, extra=1))
    opt.register_load_state_dict_pre_hook(lambda o, sd: order.append("lpre"))
    opt.register_load_state_dict_post_hook(lambda o: order.append("lpost"), prepend=True)
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert order == ["pre", "lpre", "lpost"]


def test_deepcopy_and_adagrad_eager_state():
    p = ember.ones(2, requires_grad=True)
    opt = eoptim.Adagrad([p], lr=0.1, initial_accumulator_value=0.2)
    tp = torch.ones(2, requires_grad=True)
    topt = torch.optim.Adagrad([tp], lr=0.1, initial_accumulator_value=0.2)
    e_sd, t_sd = opt.state_dict(), topt.state_dict()
    assert e_sd["state"].keys() == t_sd["state"].keys()
    assert e_sd["state"][0].keys() == t_sd["state"][0].keys()
    np.testing.assert_allclose(e_sd["state"][0]["sum"].numpy(), t_sd["state"][0]["sum"].numpy())
    clone = copy.deepcopy(opt)
    assert clone.state_dict()["param_groups"] == e_sd["param_groups"]


def test_non_float_fused_rejected():
    p = ember.zeros(2, dtype=ember.int64)
    p.grad = ember.zeros(2, dtype=ember.int64)
    opt = eoptim.Adam([p], lr=0.1, fused=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params"):
            opt.step()


def test_exports_match_torch():
    assert set(torch.optim.__all__) <= set(eoptim.__all__)
    for name in torch.optim.__all__:
        assert hasattr(eoptim, name), name


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop",
                                  "Rprop", "ASGD", "Adadelta"])
def test_capturable_on_cpu_asserts_like_torch(name):
    errs = []
    for lib, mod in ((torch, torch.optim), (ember, eoptim)):
        p = lib.zeros(2, requires_grad=True)
        p.grad = lib.ones(2)
        with pytest.raises(Exception) as err:
            getattr(mod, name)([p], capturable=True).step()
        errs.append(err.value)
    assert type(errs[1]) is type(errs[0])
    assert str(errs[1]).split(" must be")[0] == str(errs[0]).split(" must be")[0]


# ---------------------------------------------------------------------- Adafactor, Muon, SparseAdam
@pytest.mark.parametrize("name,kwargs,dtype", [
    ("Adafactor", dict(lr=0.01), "float64"),
    ("Adafactor", dict(lr=0.05, weight_decay=0.1, eps=(1e-30, 1e-3), d=1.5, beta2_decay=-0.5,
                       maximize=True), "float64"),
    ("Adafactor", dict(lr=0.01), "float32"),
    ("Muon", dict(lr=0.02), "float32"),
    ("Muon", dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw", momentum=0.3),
     "float64"),
])
def test_adafactor_and_muon_match_torch(name, kwargs, dtype):
    rng = np.random.default_rng(0)
    shapes = [(6, 4), (3, 5)] if name == "Muon" else [(5, 4), (4,), (2, 3, 4)]
    init = [rng.standard_normal(s) for s in shapes]
    tp = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in init]
    ep = [ember.tensor(a, dtype=getattr(ember, dtype), requires_grad=True) for a in init]
    topt, eopt = getattr(torch.optim, name)(tp, **kwargs), getattr(eoptim, name)(ep, **kwargs)
    for _ in range(30):
        for t, e in zip(tp, ep):
            g = rng.standard_normal(tuple(t.shape))
            t.grad = torch.tensor(g, dtype=t.dtype)
            e.grad = ember.tensor(g, dtype=e.dtype)
        topt.step()
        eopt.step()
    rtol = 1e-6 if dtype == "float64" else 1e-5
    for t, e in zip(tp, ep):
        np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), rtol=rtol, atol=1e-6)
    ts, es = topt.state_dict()["state"], eopt.state_dict()["state"]
    assert all(ts[k].keys() == es[k].keys() for k in ts)


def test_muon_and_adafactor_errors_match_torch():
    cases = [("Muon", dict(lr=-1), (2, 2)), ("Muon", dict(momentum=-1), (2, 2)),
             ("Muon", dict(adjust_lr_fn="x"), (2, 2)), ("Adafactor", dict(beta2_decay=0.5), (2,)),
             ("Adafactor", dict(d=0.5), (2,)), ("Adafactor", dict(eps=(-1, 1e-3)), (2,)),
             ("SparseAdam", dict(lr=0.0), (2,)), ("SparseAdam", dict(eps=0.0), (2,))]
    for name, kw, shape in cases:
        errs = []
        for lib, mod in ((torch, torch.optim), (ember, eoptim)):
            with pytest.raises(Exception) as err:
                getattr(mod, name)([lib.zeros(shape, requires_grad=True)], **kw)
            errs.append(err.value)
        assert type(errs[1]) is type(errs[0]) and str(errs[1]) == str(errs[0])
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        eoptim.Muon([ember.zeros(3, requires_grad=True)])


def test_sparse_adam_masked_update_matches_torch():
    from ember.optim.sparse_adam import sparse_adam_update
    rng = np.random.default_rng(0)
    init = rng.standard_normal((6, 3))
    tp = torch.tensor(init, requires_grad=True)
    topt = torch.optim.SparseAdam([tp], lr=0.1)
    p, m, v = init.copy(), np.zeros_like(init), np.zeros_like(init)
    for step in range(1, 8):
        dense = np.zeros((6, 3))
        rows = rng.choice(6, size=3, replace=False)
        dense[rows] = rng.standard_normal((3, 3))
        tp.grad = torch.tensor(dense).to_sparse()
        topt.step()
        coo = tp.grad.coalesce()
        index = tuple(coo.indices().numpy())
        sparse_adam_update(np, p, m, v, index, coo.values().numpy(), step, lr=0.1, beta1=0.9,
                           beta2=0.999, eps=1e-8)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12)
    # ember tensors are dense: like torch with a dense grad, SparseAdam refuses
    ep = ember.zeros(3, requires_grad=True)
    ep.grad = ember.ones(3)
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        eoptim.SparseAdam([ep]).step()


def test_swap_in_optimizer_params_and_state():
    live = ember.ones(3, requires_grad=True)
    opt = eoptim.Adam([live], lr=0.1)
    live.grad = ember.ones(3)
    opt.step()
    live_before = live.detach().numpy().copy()
    other = ember.zeros(3, requires_grad=True)
    other.grad = ember.ones(3)
    sd = opt.state_dict()
    sd = {"state": {0: {k: v.clone() for k, v in sd["state"][0].items()}},
          "param_groups": sd["param_groups"]}
    with eoptim.swap_in_optimizer_params_and_state(opt, {"w": other}, sd):
        assert opt.param_groups[0]["params"] == [other]
        opt.step()
    assert opt.param_groups[0]["params"][0] is live
    np.testing.assert_array_equal(live.detach().numpy(), live_before)
    assert float(other.detach().numpy()[0]) < 0            # the swapped-in param moved
    assert float(sd["state"][0]["step"]) == 2.0             # its state advanced in place
    assert float(opt.state[live]["step"]) == 1.0
    with pytest.raises(RuntimeError, match="requires initialized optimizer state"):
        with eoptim.swap_in_optimizer_params_and_state(eoptim.SGD([other]), {"w": other}, sd):
            pass


# ---------------------------------------------------------------------- CUDA (CuPy arrays)
CUDA_CONFIGS = CONFIGS + [("Adafactor", dict(lr=0.01)), ("Muon", dict(lr=0.02)),
                          ("Adam", dict(lr=0.01, capturable=True)),
                          ("AdamW", dict(lr=0.01, fused=True)),
                          ("NAdam", dict(lr=0.01, capturable=True)),
                          ("ASGD", dict(lr=0.01, capturable=True))]


@pytest.mark.cuda
@pytest.mark.parametrize("name,kwargs", CUDA_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in
                                                           enumerate(CUDA_CONFIGS)])
def test_cuda_trajectory_matches_torch_cpu(name, kwargs):
    rng = np.random.default_rng(7)
    shapes = [(6, 4), (5, 3)] if name == "Muon" else [(6, 4), (4,), (3, 2)]
    init = [rng.standard_normal(s) for s in shapes]
    dtype = "float32" if name == "Muon" else "float64"
    tp = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in init]
    ep = [ember.tensor(a, dtype=getattr(ember, dtype), device="cuda", requires_grad=True)
          for a in init]
    t_kw = {k: v for k, v in kwargs.items() if k not in ("capturable", "fused")}
    topt, eopt = getattr(torch.optim, name)(tp, **t_kw), getattr(eoptim, name)(ep, **kwargs)
    for _ in range(40):
        noise = [rng.standard_normal(s) for s in shapes]
        for t, e, n in zip(tp, ep, noise):
            t.grad = torch.tensor(n + 0.3 * t.detach().numpy(), dtype=t.dtype)
            e.grad = ember.tensor(n + 0.3 * e.detach().cpu().numpy(), dtype=e.dtype,
                                  device="cuda")
        topt.step()
        eopt.step()
    rtol = 1e-6 if dtype == "float64" else 1e-4
    for t, e in zip(tp, ep):
        assert e.is_cuda
        np.testing.assert_allclose(e.detach().cpu().numpy(), t.detach().numpy(), rtol=rtol,
                                   atol=1e-8)
    for state in eopt.state.values():
        for key, v in state.items():
            if isinstance(v, ember.Tensor) and v.dim() > 0:
                assert v.is_cuda, key


@pytest.mark.cuda
@pytest.mark.parametrize("kwargs", [dict(), dict(line_search_fn="strong_wolfe")])
def test_cuda_lbfgs_matches_torch_cpu(kwargs):
    start = np.array([-1.5, 2.0, 0.5, -0.7])
    out = []
    for lib, dev in ((torch, "cpu"), (ember, "cuda")):
        z = lib.tensor(start, device=dev, requires_grad=True)
        opt = lib.optim.LBFGS([z], **kwargs)

        def closure():
            opt.zero_grad()
            loss = (100 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2).sum()
            loss.backward()
            return loss
        for _ in range(4):
            opt.step(closure)
        out.append(z.detach().cpu().numpy())
    np.testing.assert_allclose(out[1], out[0], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- differentiable=True
DIFF_CONFIGS = [("SGD", dict(lr=0.1)),
                ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
                ("Adam", dict(lr=0.05)), ("Adam", dict(lr=0.05, weight_decay=0.1, maximize=True)),
                ("AdamW", dict(lr=0.05)), ("Adamax", dict(lr=0.05)), ("NAdam", dict(lr=0.05)),
                ("RAdam", dict(lr=0.05)), ("Adagrad", dict(lr=0.1)), ("Adadelta", dict(lr=1.0)),
                ("RMSprop", dict(lr=0.01)), ("RMSprop", dict(lr=0.01, centered=True,
                                                             momentum=0.5)),
                ("Rprop", dict(lr=0.05)), ("ASGD", dict(lr=0.05, t0=1))]


@pytest.mark.parametrize("name,kwargs", DIFF_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in
                                                           enumerate(DIFF_CONFIGS)])
def test_differentiable_step_hypergradient_matches_torch(name, kwargs):
    """Gradients flow through 8 differentiable steps back to the initial weights."""
    rng = np.random.default_rng(0)
    w0, x0 = rng.standard_normal(4), rng.standard_normal((5, 4))
    c0, d0 = rng.standard_normal(4), rng.standard_normal(4)
    res = []
    for lib, mod in ((torch, torch.optim), (ember, eoptim)):
        w = lib.tensor(w0, requires_grad=True)
        x, c, d = lib.tensor(x0), lib.tensor(c0), lib.tensor(d0)
        p = w * 1.0  # a non-leaf parameter: the steps are recorded on top of it
        opt = getattr(mod, name)([p], differentiable=True, **kwargs)
        try:
            for _ in range(8):
                # tanh saves its output, not p: ember's ops save every tensor operand (torch
                # saves only what the needed gradients use), so a loss whose graph saved p
                # itself could not be differentiated after p was updated in place
                y = lib.tanh(p)
                (g,) = lib.autograd.grad((c * y + d * y * y).sum(), p, create_graph=True)
                p.grad = g
                opt.step()
            ((x @ p) ** 2).sum().backward()
            res.append((p.detach().numpy().copy(), w.grad.numpy().copy()))
        except RuntimeError as exc:
            res.append(type(exc))
    if res[0] is RuntimeError:  # torch's own differentiable path fails here: so does ours
        assert res[1] is RuntimeError
        return
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=1e-6)
    np.testing.assert_allclose(res[1][1], res[0][1], rtol=1e-5, atol=1e-10)


def test_user_defined_optimizer_subclass_runs_like_torch():
    """The classic custom-optimizer pattern: subclass, no_grad step over param_groups."""
    results = []
    for lib in (torch, ember):
        class MySGD(lib.optim.Optimizer):
            def __init__(self, params, lr=0.1):
                super().__init__(params, dict(lr=lr))

            @lib.no_grad()
            def step(self, closure=None):
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        state = self.state[p]
                        state["n"] = state.get("n", 0) + 1
                        p.add_(p.grad, alpha=-group["lr"])

        w = lib.tensor([1.0, -2.0], requires_grad=True)
        opt = MySGD([w], lr=0.25)
        sched = lib.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        calls = []
        opt.register_step_post_hook(lambda o, a, k: calls.append(1))
        for _ in range(3):
            opt.zero_grad()
            (w ** 2).sum().backward()
            opt.step()
            sched.step()
        results.append((w.detach().numpy().copy(), opt.state_dict()["state"][0]["n"],
                        len(calls), sched.get_last_lr()))
    np.testing.assert_allclose(results[1][0], results[0][0])
    assert results[1][1:] == results[0][1:]


_LEGACY = ["SGD", "ASGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
           "RMSprop", "Rprop", "Adafactor"]


@pytest.mark.parametrize("name", _LEGACY)
def test_setstate_upgrades_an_older_state_like_torch(name):
    # the state of an optimizer pickled by an older version: group options missing and the
    # step a Python number. __setstate__ fills the options with torch's defaults and makes
    # the step state a tensor, as torch's does; the upgraded optimizer still steps like torch.
    if not hasattr(torch.optim, name):
        pytest.skip(f"this torch has no optim.{name}")
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(4).astype(np.float32)
    # the options torch's own __setstate__ restores, found by dropping each in turn
    dropped = []
    for k in ("foreach", "maximize", "differentiable", "capturable", "fused", "nesterov",
              "amsgrad", "decoupled_weight_decay", "momentum", "centered"):
        opt = getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(2))], lr=0.01)
        state = opt.__getstate__()
        if k in state["param_groups"][0]:
            state["param_groups"][0].pop(k)
            opt.__setstate__(state)
            if k in opt.param_groups[0]:
                dropped.append(k)
    res = {}
    for m, mod in ((torch, torch.optim), (ember, eoptim)):
        w = m.nn.Parameter(m.tensor(w0.copy()))
        opt = getattr(mod, name)([w], lr=0.01)
        (w * w).sum().backward()
        opt.step()
        state = opt.__getstate__()
        for g in state["param_groups"]:
            for k in dropped:
                g.pop(k, None)
        for s in state["state"].values():
            for k in ("step", "eta", "mu"):   # scalar state once stored as numbers
                if k in s:
                    s[k] = float(s[k])
        opt.__setstate__(state)
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        step = opt.state[w].get("step")
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
        res[m.__name__] = (group, isinstance(step, m.Tensor), float(step) if step is not None
                           else None, w.detach().numpy().copy())
    tg, ts, tv, tw = res["torch"]
    eg, es, ev, ew = res["ember"]
    assert {k: v for k, v in eg.items() if k in dropped} == \
        {k: v for k, v in tg.items() if k in dropped}
    assert (es, ev) == (ts, tv)
    np.testing.assert_allclose(ew, tw, rtol=1e-5, atol=1e-7)
