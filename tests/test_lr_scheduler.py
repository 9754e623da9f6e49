"""ember.optim.lr_scheduler against torch.optim.lr_scheduler: lr (and momentum) sequences."""
from __future__ import annotations

import pickle
import warnings

import pytest

import ember

torch = pytest.importorskip("torch")


def _opt(lib, name: str = "SGD", ngroups: int = 2, **kw):
    groups = [{"params": [lib.zeros(2, requires_grad=True)], "lr": 0.1 * (i + 1)}
              for i in range(ngroups)]
    if name == "SGD":
        kw.setdefault("momentum", 0.9)
    return getattr(lib.optim, name)(groups, lr=0.1, **kw)


def _momenta(opt) -> list:
    return [g["betas"][0] if "betas" in g else g.get("momentum") for g in opt.param_groups]


def _run(lib, make, steps: int = 60, opt_name: str = "SGD", metrics=None, epochs=None) -> list:
    opt = _opt(lib, opt_name)
    sched = make(lib.optim.lr_scheduler, opt)
    out = [(list(sched.get_last_lr()), _momenta(opt))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(steps):
            opt.step()
            if metrics is not None:
                sched.step(metrics[i % len(metrics)])
            elif epochs is not None:
                sched.step(epochs[i])
            else:
                sched.step()
            out.append(([float(x) for x in sched.get_last_lr()], _momenta(opt)))
    return out


CASES = {
    "LambdaLR": lambda L, o: L.LambdaLR(o, lambda e: 0.95 ** e),
    "LambdaLR-list": lambda L, o: L.LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: 0.9 ** e]),
    "MultiplicativeLR": lambda L, o: L.MultiplicativeLR(o, lambda e: 0.97),
    "StepLR": lambda L, o: L.StepLR(o, step_size=7, gamma=0.5),
    "StepLR-default": lambda L, o: L.StepLR(o, 3),
    "MultiStepLR": lambda L, o: L.MultiStepLR(o, [5, 12, 12, 30], gamma=0.3),
    "ConstantLR": lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=9),
    "ConstantLR-default": lambda L, o: L.ConstantLR(o),
    "LinearLR": lambda L, o: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=17),
    "LinearLR-down": lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.05,
                                             total_iters=40),
    "ExponentialLR": lambda L, o: L.ExponentialLR(o, gamma=0.93),
    "PolynomialLR": lambda L, o: L.PolynomialLR(o, total_iters=30, power=2.0),
    "PolynomialLR-default": lambda L, o: L.PolynomialLR(o),
    "CosineAnnealingLR": lambda L, o: L.CosineAnnealingLR(o, T_max=13, eta_min=0.001),
    "CosineAnnealingLR-long": lambda L, o: L.CosineAnnealingLR(o, T_max=100),
    "CosineAnnealingWarmRestarts": lambda L, o: L.CosineAnnealingWarmRestarts(o, 5, 2, 0.01),
    "CosineAnnealingWarmRestarts-1": lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=7),
    "CyclicLR-triangular": lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=5),
    "CyclicLR-triangular2": lambda L, o: L.CyclicLR(o, 0.01, 0.1, 5, 3, mode="triangular2"),
    "CyclicLR-exp_range": lambda L, o: L.CyclicLR(o, [0.01, 0.02], 0.1, 4, mode="exp_range",
                                                  gamma=0.97),
    "CyclicLR-scale_fn": lambda L, o: L.CyclicLR(o, 0.01, 0.1, 6, scale_fn=lambda x: 0.9 ** x,
                                                 scale_mode="iterations",
                                                 cycle_momentum=False),
    "OneCycleLR": lambda L, o: L.OneCycleLR(o, max_lr=0.5, total_steps=60),
    "OneCycleLR-3phase": lambda L, o: L.OneCycleLR(o, [0.5, 1.0], epochs=6, steps_per_epoch=10,
                                                   three_phase=True, anneal_strategy="linear"),
    "OneCycleLR-nomom": lambda L, o: L.OneCycleLR(o, 0.3, total_steps=70, pct_start=0.5,
                                                  cycle_momentum=False, div_factor=10.0),
    "SequentialLR": lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, 0.1, total_iters=10), L.CosineAnnealingLR(o, 20),
            L.ExponentialLR(o, 0.9)], milestones=[10, 35]),
    "SequentialLR-const": lambda L, o: L.SequentialLR(
        o, [L.ConstantLR(o, 0.5, 4), L.StepLR(o, 5, 0.5)], milestones=[8]),
    "ChainedScheduler": lambda L, o: L.ChainedScheduler(
        [L.ConstantLR(o, 0.5, 4), L.ExponentialLR(o, 0.95)]),
    "ChainedScheduler-3": lambda L, o: L.ChainedScheduler(
        [L.LinearLR(o, 0.2, total_iters=5), L.MultiStepLR(o, [10, 20]),
         L.CosineAnnealingLR(o, 25)], optimizer=o),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lr_sequence_matches_torch(case):
    make = CASES[case]
    assert _run(ember, make) == _run(torch, make)


@pytest.mark.parametrize("case", ["OneCycleLR", "CyclicLR-triangular", "OneCycleLR-3phase"])
def test_momentum_cycling_with_adam_betas(case):
    make = CASES[case]
    assert _run(ember, make, opt_name="Adam") == _run(torch, make, opt_name="Adam")


@pytest.mark.parametrize("kwargs", [dict(patience=2, cooldown=1, factor=0.5,
                                         min_lr=[0.001, 0.01]),
                                    dict(mode="max", threshold_mode="abs", threshold=0.1,
                                         patience=1),
                                    dict(patience=0, eps=0.05, factor=0.3)])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    metrics = [5, 4, 4, 4, 4, 4.5, 3, 3, 3, 3.2, 3, 3, 2.99, 3]
    make = lambda L, o: L.ReduceLROnPlateau(o, **kwargs)  # noqa: E731
    assert _run(ember, make, metrics=metrics) == _run(torch, make, metrics=metrics)


@pytest.mark.parametrize("case", ["StepLR", "MultiStepLR", "ExponentialLR", "LinearLR",
                                  "ConstantLR", "PolynomialLR", "CosineAnnealingLR",
                                  "CosineAnnealingWarmRestarts"])
def test_explicit_epochs_closed_form_matches_torch(case):
    epochs = [3, 4, 10, 10, 2, 25, 7, 30, 31, 0, 12, 50]
    make = CASES[case]
    assert _run(ember, make, steps=len(epochs), epochs=epochs) == \
        _run(torch, make, steps=len(epochs), epochs=epochs)


def test_warm_restarts_fractional_epochs():
    epochs = [i * 0.37 for i in range(40)]
    make = CASES["CosineAnnealingWarmRestarts"]
    assert _run(ember, make, steps=40, epochs=epochs) == _run(torch, make, steps=40, epochs=epochs)


@pytest.mark.parametrize("case", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR-exp_range",
                                  "SequentialLR", "ChainedScheduler", "LambdaLR",
                                  "CosineAnnealingWarmRestarts"])
def test_state_dict_resume(case):
    """Save after 20 steps, resume in a fresh optimizer/scheduler, compare the remainder."""
    make = CASES[case]
    full = _run(ember, make, steps=45)
    opt = _opt(ember)
    sched = make(ember.optim.lr_scheduler, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(20):
            opt.step()
            sched.step()
        opt_sd, sched_sd = opt.state_dict(), sched.state_dict()
        pickle.dumps(sched_sd)  # state dicts must be picklable (no bound methods)
        opt2 = _opt(ember)
        sched2 = make(ember.optim.lr_scheduler, opt2)
        sched2.load_state_dict(sched_sd)
        opt2.load_state_dict(opt_sd)
        rest = []
        for _ in range(25):
            opt2.step()
            sched2.step()
            rest.append(([float(x) for x in sched2.get_last_lr()], _momenta(opt2)))
    assert rest == full[21:]


def test_state_dict_keys_match_torch():
    for case in ["StepLR", "OneCycleLR", "CyclicLR-triangular", "SequentialLR", "LambdaLR"]:
        opt_t, opt_e = _opt(torch), _opt(ember)
        st = CASES[case](torch.optim.lr_scheduler, opt_t).state_dict()
        se = CASES[case](ember.optim.lr_scheduler, opt_e).state_dict()
        assert set(se) - {"verbose"} == set(st) - {"verbose"}, case


def test_tensor_lr_updated_in_place():
    outs = []
    for lib in (torch, ember):
        p = lib.zeros(2, requires_grad=True)
        lr = lib.tensor(0.1)
        opt = lib.optim.SGD([p], lr=lr)
        sched = lib.optim.lr_scheduler.ExponentialLR(opt, 0.5)
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] is lr
        outs.append(float(lr))
    assert outs[0] == outs[1]


def test_warnings_like_torch():
    p = ember.zeros(2, requires_grad=True)
    opt = ember.optim.SGD([p], lr=0.1)
    sched = ember.optim.lr_scheduler.StepLR(opt, 2)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()
    with pytest.warns(UserWarning, match="please use `get_last_lr\\(\\)`"):
        sched.get_lr()
    with pytest.warns(UserWarning, match="epoch parameter in `scheduler.step\\(\\)`"):
        sched.step(4)
    with pytest.warns(UserWarning, match="verbose parameter is deprecated"):
        ember.optim.lr_scheduler.StepLR(opt, 2, verbose=True)


ERRORS = [
    lambda L, o: L.StepLR(object(), 2),
    lambda L, o: L.ConstantLR(o, factor=1.5),
    lambda L, o: L.LinearLR(o, start_factor=0),
    lambda L, o: L.LinearLR(o, end_factor=1.5),
    lambda L, o: L.LambdaLR(o, [lambda e: 1.0]),
    lambda L, o: L.MultiplicativeLR(o, 0.5),
    lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=0),
    lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0),
    lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=2, eta_min="a"),
    lambda L, o: L.CyclicLR(o, 0.1, 1.0, mode="bogus"),
    lambda L, o: L.CyclicLR(o, [0.1], 1.0),
    lambda L, o: L.OneCycleLR(o, 0.1),
    lambda L, o: L.OneCycleLR(o, 0.1, total_steps=0),
    lambda L, o: L.OneCycleLR(o, 0.1, epochs=-1, steps_per_epoch=2),
    lambda L, o: L.OneCycleLR(o, 0.1, total_steps=10, pct_start=1.5),
    lambda L, o: L.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="x"),
    lambda L, o: L.ReduceLROnPlateau(o, factor=1.0),
    lambda L, o: L.ReduceLROnPlateau(o, mode="up"),
    lambda L, o: L.ReduceLROnPlateau(o, threshold_mode="x"),
    lambda L, o: L.ReduceLROnPlateau(o, min_lr=[0.1]),
    lambda L, o: L.SequentialLR(o, [], []),
    lambda L, o: L.SequentialLR(o, [L.StepLR(o, 2), L.StepLR(o, 3)], [1, 2]),
    lambda L, o: L.SequentialLR(o, [L.ReduceLROnPlateau(o)], []),
    lambda L, o: L.ChainedScheduler([]),
    lambda L, o: L.StepLR(o, 2, last_epoch=5),
]


@pytest.mark.parametrize("i", range(len(ERRORS)))
def test_errors_match_torch(i):
    errs = []
    for lib in (torch, ember):
        opt = _opt(lib)
        with pytest.raises(Exception) as err:
            ERRORS[i](lib.optim.lr_scheduler, opt)
        errs.append(err.value)
    assert type(errs[1]) is type(errs[0])
    assert str(errs[1]) == str(errs[0])


def test_one_cycle_overrun_raises():
    opt = _opt(ember)
    sched = ember.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=3)
    for _ in range(3):
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="Tried to step 4 times"):
        opt.step()
        sched.step()


def test_exports():
    names = set(torch.optim.lr_scheduler.__all__)
    assert names <= set(ember.optim.lr_scheduler.__all__)
    for name in names:
        assert hasattr(ember.optim.lr_scheduler, name)
