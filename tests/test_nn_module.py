"""nn.Module, Parameter and containers against torch: registration, naming, state_dict,
hooks, modes, conversions, reprs and error messages."""
from __future__ import annotations

import copy
import pickle
from collections import OrderedDict

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
enn = ember.nn
tnn = torch.nn


def to_ember(t):
    return ember.tensor(t.detach().numpy())


def copy_weights(tm, em):
    em.load_state_dict({k: to_ember(v) for k, v in tm.state_dict().items()})


def same_repr(tm, em):
    assert repr(em) == repr(tm).replace("torch.", "ember.")


def build(m):
    """A nested model with buffers, shared modules and containers, in framework ``m``."""
    nn = m.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.register_buffer("steps", m.zeros(()))
            self.register_buffer("scratch", m.ones(2), persistent=False)
            self.scale = nn.Parameter(m.ones(1))

        def forward(self, x):
            return self.act(self.fc(x)) * self.scale

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
            self.blocks = nn.ModuleList([Block() for _ in range(2)])
            self.heads = nn.ModuleDict({"cls": nn.Linear(4, 2), "box": nn.Linear(4, 3, bias=False)})
            self.shared = self.heads["cls"]
            self.empty = None

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            return self.heads["cls"](x), self.heads["box"](x)

    return Net()


def test_nested_repr_matches_torch():
    same_repr(build(torch), build(ember))


def test_state_dict_keys_and_naming_match_torch():
    tm, em = build(torch), build(ember)
    assert list(em.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in em.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert [n for n, _ in em.named_buffers()] == [n for n, _ in tm.named_buffers()]
    assert [n for n, _ in em.named_modules()] == [n for n, _ in tm.named_modules()]
    assert [n for n, _ in em.named_modules(remove_duplicate=False)] == \
        [n for n, _ in tm.named_modules(remove_duplicate=False)]
    assert [n for n, _ in em.named_children()] == [n for n, _ in tm.named_children()]
    assert [n for n, _ in em.named_parameters(prefix="p", recurse=False)] == \
        [n for n, _ in tm.named_parameters(prefix="p", recurse=False)]
    assert len(list(em.modules())) == len(list(tm.modules()))
    assert em.state_dict()._metadata.keys() == tm.state_dict()._metadata.keys()


def test_forward_and_grads_match_after_state_dict_copy():
    tm, em = build(torch).double(), build(ember).double()
    copy_weights(tm, em)
    x = np.random.default_rng(0).standard_normal((5, 3))
    tx = torch.tensor(x, requires_grad=True)
    ex = ember.tensor(x, requires_grad=True)
    (ta, tb), (ea, eb) = tm(tx), em(ex)
    np.testing.assert_allclose(ea.detach().numpy(), ta.detach().numpy(), rtol=1e-12)
    (ta.sum() + tb.pow(2).sum()).backward()
    (ea.sum() + eb.pow(2).sum()).backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-10)
    tgrads = {n: p.grad for n, p in tm.named_parameters()}
    for n, p in em.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tgrads[n].numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.host_only
def test_parameter_basics():
    p = enn.Parameter(ember.tensor([1.0, 2.0]))
    tp = tnn.Parameter(torch.tensor([1.0, 2.0]))
    assert repr(p) == repr(tp)
    assert isinstance(p, ember.Tensor) and p.requires_grad and p.is_leaf
    assert type(p * 2) is ember.Tensor
    q = copy.deepcopy(p)
    assert type(q) is enn.Parameter and q.requires_grad and q is not p
    r = pickle.loads(pickle.dumps(p))
    assert type(r) is enn.Parameter and r.tolist() == [1.0, 2.0]
    assert not enn.Parameter(ember.ones(1), requires_grad=False).requires_grad
    with pytest.raises(RuntimeError):
        enn.Parameter(ember.tensor([1, 2]))
    assert isinstance(enn.Buffer(ember.ones(1)), enn.Buffer)
    assert not isinstance(ember.ones(1), enn.Buffer)


def test_buffer_assignment_and_persistence():
    for m in (torch, ember):
        mod = m.nn.Module()
        mod.a = m.nn.Buffer(m.zeros(2))
        mod.b = m.nn.Buffer(m.zeros(2), persistent=False)
        mod.register_buffer("c", None)
        mod.a = m.ones(2)  # replacing a buffer keeps it a buffer
        assert list(mod.state_dict()) == ["a"]
        assert [n for n, _ in mod.named_buffers()] == ["a", "b"]
        with pytest.raises(TypeError):
            mod.a = 3


def _errors(fn):
    """Run ``fn`` on torch and ember; both must raise the same type; return the messages."""
    msgs = []
    for m in (torch, ember):
        with pytest.raises(Exception) as info:
            fn(m)
        msgs.append(info.value)
    assert isinstance(msgs[1], type(msgs[0])), (msgs[0], msgs[1])
    return str(msgs[0]), str(msgs[1])


@pytest.mark.parametrize("case", [
    lambda m: m.nn.Module().register_buffer(3, None),
    lambda m: m.nn.Module().register_buffer("a.b", None),
    lambda m: m.nn.Module().register_buffer("", None),
    lambda m: m.nn.Module().register_buffer("x", [1]),
    lambda m: m.nn.Module().register_parameter("x", m.ones(1)),
    lambda m: m.nn.Module().register_parameter("a.b", None),
    lambda m: m.nn.Module().add_module("x", 3),
    lambda m: m.nn.Module().add_module("a.b", m.nn.Module()),
    lambda m: m.nn.Linear(2, 2).__setattr__("weight", m.ones(2, 2)),
    lambda m: m.nn.Linear(2, 2).register_buffer("weight", m.ones(1)),
    lambda m: m.nn.Linear(2, 2).get_submodule("nope"),
    lambda m: m.nn.Sequential(m.nn.Linear(2, 2)).get_parameter("0.nope"),
    lambda m: m.nn.Sequential(m.nn.Linear(2, 2)).get_parameter("0.in_features"),
    lambda m: m.nn.Linear(2, 2).nonexistent,
    lambda m: m.nn.Module().train("yes"),
    lambda m: m.nn.Module()(1),
    lambda m: m.nn.Sequential()[0],
    lambda m: m.nn.ModuleList([m.nn.ReLU()])[3],
    lambda m: m.nn.Linear(2, 2).register_parameter("p", m.nn.Parameter(m.ones(1)) * 2),
])
def test_registration_errors_match_torch(case):
    # same exception type as torch (messages may add ember's [op] prefix and hints)
    _errors(case)


def test_missing_super_init_is_a_clear_error():
    for m in (torch, ember):
        class Bad(m.nn.Module):
            def __init__(self):
                self.fc = m.nn.Linear(2, 2)
        with pytest.raises(AttributeError, match="before Module.__init__"):
            Bad()
    class Bad2(enn.Module):
        def __init__(self):
            self.w = enn.Parameter(ember.ones(1))
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad2()


def test_register_errors_messages_identical():
    cases = [
        lambda m: m.nn.Module().register_buffer("a.b", None),
        lambda m: m.nn.Linear(2, 2).register_buffer("weight", m.ones(1)),
        lambda m: m.nn.Linear(2, 2).get_submodule("nope"),
        lambda m: m.nn.Linear(2, 2).nonexistent,
    ]
    for c in cases:
        t_msg, e_msg = _errors(c)
        assert e_msg == t_msg


def test_train_eval_requires_grad_zero_grad():
    em = build(ember)
    em.eval()
    assert not any(m.training for m in em.modules())
    em.train()
    assert all(m.training for m in em.modules())
    em.requires_grad_(False)
    assert not any(p.requires_grad for p in em.parameters())
    em.requires_grad_()
    out = em(ember.randn(2, 3))
    (out[0].sum() + out[1].sum()).backward()
    assert all(p.grad is not None for p in em.parameters())
    em.zero_grad(set_to_none=False)
    assert all(float(p.grad.abs().sum()) == 0 for p in em.parameters())
    em.zero_grad()
    assert all(p.grad is None for p in em.parameters())


def test_to_and_casts_keep_parameter_identity():
    em = build(ember)
    w = em.stem[0].weight
    em.double()
    assert em.stem[0].weight is w and w.dtype is ember.float64
    assert em.blocks[0].steps.dtype is ember.float64
    em.to(ember.float16)
    assert w.dtype is ember.float16 and isinstance(w, enn.Parameter)
    em.to("cpu", ember.float32)
    assert w.dtype is ember.float32
    em.half().float()
    assert w.dtype is ember.float32 and w.requires_grad
    with pytest.raises(TypeError):
        em.to(ember.int64)
    em.to(ember.zeros(1, dtype=ember.float64))
    assert w.dtype is ember.float64


def test_load_state_dict_results_and_errors_match_torch():
    tm, em = build(torch), build(ember)
    sd_t = tm.state_dict()
    sd_e = {k: to_ember(v) for k, v in sd_t.items()}
    assert repr(em.load_state_dict(sd_e)) == repr(tm.load_state_dict(sd_t))
    # missing + unexpected, non-strict
    sd_t2 = OrderedDict(sd_t)
    del sd_t2["stem.0.bias"]
    sd_t2["extra"] = torch.zeros(1)
    sd_e2 = {k: to_ember(v) for k, v in sd_t2.items()}
    rt = tm.load_state_dict(sd_t2, strict=False)
    re = em.load_state_dict(sd_e2, strict=False)
    assert re.missing_keys == rt.missing_keys and re.unexpected_keys == rt.unexpected_keys
    # strict: same message
    with pytest.raises(RuntimeError) as it:
        tm.load_state_dict(sd_t2)
    with pytest.raises(RuntimeError) as ie:
        em.load_state_dict(sd_e2)
    assert str(ie.value) == str(it.value)
    # shape mismatches listed together
    sd_t3 = OrderedDict(sd_t)
    sd_t3["stem.0.weight"] = torch.zeros(5, 3)
    sd_t3["heads.box.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as it:
        tm.load_state_dict(sd_t3)
    with pytest.raises(RuntimeError) as ie:
        em.load_state_dict({k: to_ember(v) for k, v in sd_t3.items()})
    assert str(ie.value) == str(it.value)


def test_load_state_dict_assign_and_values():
    lin = enn.Linear(3, 2)
    new = {"weight": ember.ones(2, 3), "bias": ember.zeros(2)}
    lin.load_state_dict(new, assign=True)
    assert isinstance(lin.weight, enn.Parameter) and lin.weight.requires_grad
    assert lin.weight.tolist() == [[1.0] * 3] * 2
    lin2 = enn.Linear(3, 2)
    w = lin2.weight
    lin2.load_state_dict({"weight": ember.full((2, 3), 2.0), "bias": ember.zeros(2)})
    assert lin2.weight is w and w.tolist() == [[2.0] * 3] * 2


def test_state_dict_hooks():
    em = enn.Linear(2, 2)
    calls = []
    em.register_state_dict_pre_hook(lambda mod, prefix, keep_vars: calls.append("pre"))
    em._register_state_dict_hook(lambda mod, sd, prefix, meta: calls.append("post"))
    em.register_load_state_dict_post_hook(lambda mod, keys: calls.append(("load", list(keys[0]))))
    em.register_load_state_dict_pre_hook(lambda mod, sd, *a: calls.append("load_pre"))
    sd = em.state_dict(keep_vars=True)
    assert sd["weight"] is em.weight
    em.load_state_dict(sd)
    assert calls == ["pre", "post", "load_pre", ("load", [])]


class _Log:
    def __init__(self):
        self.calls = []


def _hooked(m, log):
    lin = m.nn.Linear(3, 2).double()
    lin.register_forward_pre_hook(lambda mod, args: log.append(("pre", tuple(args[0].shape))))
    lin.register_forward_pre_hook(lambda mod, args, kw: log.append(("pre_kw", sorted(kw))),
                                  with_kwargs=True)
    lin.register_forward_pre_hook(lambda mod, args: log.append(("first",)), prepend=True)
    lin.register_forward_hook(lambda mod, args, out: log.append(("fwd", tuple(out.shape))))
    lin.register_forward_hook(lambda mod, args, kw, out: out * 2, with_kwargs=True)
    return lin


def test_forward_hooks_order_and_results_match_torch():
    logs = {}
    outs = {}
    for m in (torch, ember):
        log = []
        lin = _hooked(m, log)
        with m.no_grad():
            lin.weight.fill_(0.5)
            lin.bias.fill_(0.1)
        outs[m.__name__] = lin(m.ones(4, 3, dtype=m.float64)).tolist()
        logs[m.__name__] = log
    assert logs["ember"] == logs["torch"]
    assert outs["ember"] == outs["torch"]


def test_pre_hook_changes_input_and_handle_removes():
    for m in (torch, ember):
        lin = m.nn.Identity()
        h = lin.register_forward_pre_hook(lambda mod, args: (args[0] + 1,))
        assert lin(m.zeros(2)).tolist() == [1.0, 1.0]
        h.remove()
        assert lin(m.zeros(2)).tolist() == [0.0, 0.0]


def test_always_call_forward_hook_runs_on_error():
    for m in (torch, ember):
        seen = []
        lin = m.nn.Linear(3, 2)
        lin.register_forward_hook(lambda mod, a, o: seen.append("always"), always_call=True)
        lin.register_forward_hook(lambda mod, a, o: seen.append("normal"))
        with pytest.raises(RuntimeError):
            lin(m.ones(2, 5))
        assert seen == ["always"]


def _bw_run(m, x_np, modify=False):
    lin = m.nn.Linear(3, 2).double()
    with m.no_grad():
        lin.weight.copy_(m.tensor(np.arange(6.0).reshape(2, 3) / 7))
        lin.bias.fill_(0.3)
    rec = []

    def hook(mod, gin, gout):
        rec.append(("hook", [None if g is None else g.tolist() for g in gin],
                    [g.tolist() for g in gout]))
        if modify:
            return tuple(None if g is None else g * 3 for g in gin)

    def pre(mod, gout):
        rec.append(("pre", [g.tolist() for g in gout]))
        if modify:
            return tuple(g * 2 for g in gout)

    lin.register_full_backward_hook(hook)
    lin.register_full_backward_pre_hook(pre)
    x = m.tensor(x_np, requires_grad=True)
    (lin(x) ** 2).sum().backward()
    return rec, x.grad.tolist(), lin.weight.grad.tolist()


@pytest.mark.parametrize("modify", [False, True])
def test_full_backward_hooks_match_torch(modify):
    x = np.random.default_rng(1).standard_normal((4, 3))
    rt = _bw_run(torch, x, modify)
    re = _bw_run(ember, x, modify)
    assert [r[0] for r in re[0]] == [r[0] for r in rt[0]]
    for a, b in zip(re[0], rt[0]):
        np.testing.assert_allclose(np.array(a[1], dtype=float), np.array(b[1], dtype=float))
    np.testing.assert_allclose(re[1], rt[1])
    np.testing.assert_allclose(re[2], rt[2])


def test_full_backward_hook_without_input_grad():
    for m in (torch, ember):
        lin = m.nn.Linear(3, 2)
        seen = []
        lin.register_full_backward_hook(lambda mod, gi, go: seen.append((gi, len(go))))
        lin(m.ones(2, 3)).sum().backward()
        assert seen == [((None,), 1)]


def test_global_forward_hook():
    from ember.nn.modules.module import register_module_forward_hook
    seen = []
    h = register_module_forward_hook(lambda mod, a, o: seen.append(type(mod).__name__))
    try:
        enn.Sequential(enn.ReLU(), enn.Tanh())(ember.ones(1))
    finally:
        h.remove()
    assert seen == ["ReLU", "Tanh", "Sequential"]


def test_layer_error_names_the_path():
    class Enc(enn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = enn.Linear(784, 256)

        def forward(self, x):
            return self.fc1(x)

    class Model(enn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Enc()

        def forward(self, x):
            return self.encoder(x)

    with pytest.raises(RuntimeError, match=r"^\[Linear encoder\.fc1\] expected input \(\*, 784\), "
                                           r"got \(64, 100\)"):
        Model()(ember.randn(64, 100))
    with pytest.raises(RuntimeError, match=r"^\[Linear\] expected input"):
        enn.Linear(784, 2)(ember.randn(64, 100))
    # forward called directly, and a module method driving the model, still give the path
    with pytest.raises(RuntimeError, match=r"^\[Linear encoder\.fc1\] expected input"):
        Model().forward(ember.randn(64, 100))

    class Trainer(enn.Module):
        def __init__(self):
            super().__init__()
            self.model = Model()

        def step(self, x):
            return self.model(x)

    with pytest.raises(RuntimeError, match=r"^\[Linear model\.encoder\.fc1\] expected"):
        Trainer().step(ember.randn(64, 100))
    seq = enn.Sequential(enn.Linear(4, 8), enn.ReLU(), enn.Linear(4, 2))
    with pytest.raises(RuntimeError, match=r"^\[Linear 2\] expected input \(\*, 4\), got \(3, 8\)"):
        seq(ember.randn(3, 4))


def test_deepcopy_pickle_and_dir():
    em = build(ember)
    c = copy.deepcopy(em)
    assert list(c.state_dict()) == list(em.state_dict())
    assert c.stem[0].weight is not em.stem[0].weight
    assert c.shared is c.heads["cls"]
    p = pickle.loads(pickle.dumps(em.stem))
    np.testing.assert_array_equal(p[0].weight.detach().numpy(),
                                  em.stem[0].weight.detach().numpy())
    assert isinstance(p[0].weight, enn.Parameter)
    d = dir(em)
    for name in ("stem", "blocks", "heads", "forward", "training"):
        assert name in d
    assert "0" not in dir(em.stem)


def test_apply_and_get_submodule():
    em = build(ember)
    names = []
    em.apply(lambda mod: names.append(type(mod).__name__))
    tm = build(torch)
    tnames = []
    tm.apply(lambda mod: tnames.append(type(mod).__name__))
    assert names == tnames
    assert em.get_submodule("blocks.1.fc") is em.blocks[1].fc
    assert em.get_parameter("blocks.1.scale") is em.blocks[1].scale
    assert em.get_buffer("blocks.0.steps") is em.blocks[0].steps
    em.set_submodule("blocks.1.act", enn.Tanh())
    assert isinstance(em.blocks[1].act, enn.Tanh)


# ---------------------------------------------------------------------- containers
def test_sequential_operations_match_torch():
    def ops(m):
        nn = m.nn
        s = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        out = [repr(s[1:]), repr(s[-1]), len(s)]
        s.append(nn.Tanh())
        s.insert(1, nn.Sigmoid())
        s.extend([nn.Identity()])
        out.append(repr(s))
        out.append(repr(s.pop(2)))
        del s[0]
        out.append(repr(s))
        s2 = s + nn.Sequential(nn.ReLU())
        out.append(repr(s2))
        s[0] = nn.GELU()
        out.append(repr(s))
        out.append(repr(nn.Sequential(OrderedDict([("a", nn.ReLU()), ("b", nn.Tanh())]))))
        out.append([type(x).__name__ for x in s])
        return [o.replace("torch.", "ember.") if isinstance(o, str) else o for o in out]
    assert ops(ember) == ops(torch)


def test_modulelist_moduledict_match_torch():
    def ops(m):
        nn = m.nn
        ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)] + [nn.ReLU()])
        out = [repr(ml), len(ml), repr(ml[1:3])]
        ml.append(nn.Tanh())
        ml.insert(0, nn.Sigmoid())
        ml.extend([nn.Identity()])
        del ml[1]
        out.append(repr(ml))
        out.append(list(dict(ml.named_parameters())))
        md = nn.ModuleDict({"b": nn.ReLU(), "a": nn.Tanh()})
        md.update([("c", nn.Sigmoid())])
        md["d"] = nn.Identity()
        out.extend([repr(md), list(md.keys()), "a" in md, len(md)])
        out.append(repr(md.pop("b")))
        out.append(list(md))
        return out
    assert ops(ember) == ops(torch)


@pytest.mark.host_only
def test_parameter_containers_match_torch():
    def ops(m):
        nn = m.nn
        pl = nn.ParameterList([nn.Parameter(m.zeros(2, 3)), m.ones(4, dtype=m.float64)])
        pl.append(m.zeros(1))
        out = [repr(pl).replace("torch.", "ember."), len(pl), list(dict(pl.named_parameters())),
               type(pl[1]).__name__]
        pd = nn.ParameterDict({"b": m.zeros(1), "a": nn.Parameter(m.ones(2))})
        pd["c"] = m.zeros(3)
        out.extend([repr(pd).replace("torch.", "ember."), list(pd.keys()),
                    list(dict(pd.named_parameters())), "a" in pd])
        out.append(tuple(pd.pop("b").shape))
        out.append(list(pd))
        return out
    assert ops(ember) == ops(torch)


def test_lazy_linear_materializes_like_torch():
    for m in (torch, ember):
        lazy = m.nn.LazyLinear(5)
        assert lazy.has_uninitialized_params()
        y = lazy(m.randn(2, 7))
        assert tuple(y.shape) == (2, 5)
        assert type(lazy).__name__ == "Linear"
        assert lazy.in_features == 7 and tuple(lazy.weight.shape) == (5, 7)
    e = enn.LazyLinear(3)
    e.load_state_dict({"weight": ember.ones(3, 4), "bias": ember.zeros(3)})
    assert tuple(e.weight.shape) == (3, 4)
