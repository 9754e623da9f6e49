"""ember.multiprocessing: shared-memory tensors, zero-copy Queue transfer, spawn, Hogwild."""
import sys

import numpy as np
import pytest

import ember
import ember.multiprocessing as mp

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="shared memory via /dev/shm or memfd (Linux)")


def _fill(t, value):
    t.fill_(value)


def _add_index(i, t):
    t[i] += i + 1


def _echo(q_in, q_out, done):
    t = q_in.get()
    t.mul_(2)  # written in place in the child
    q_out.put(t)
    q_out.put(float(t.sum()))
    # the receiver duplicates this process's descriptor while unpickling: stay alive until
    # it has (torch's file_descriptor strategy has the same rule)
    done.wait(60)


def _fail(i):
    if i == 1:
        raise ValueError("boom in child")


def test_share_memory_in_place_and_child_writes_seen_by_parent():
    t = ember.zeros(6)
    data_before = t
    assert not t.is_shared()
    assert t.share_memory_() is data_before and t.is_shared()
    view = t[2:4]
    assert view.is_shared()
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_fill, args=(t, 7.0))
    p.start()
    p.join()
    assert p.exitcode == 0
    np.testing.assert_array_equal(t.numpy(), np.full(6, 7.0))
    np.testing.assert_array_equal(view.numpy(), [7.0, 7.0])


def test_view_made_before_sharing_follows_its_base():
    t = ember.arange(8.0)
    v = t[1::2]
    v.share_memory_()
    assert t.is_shared() and v.is_shared()
    t[3] = 50.0
    assert float(v[1]) == 50.0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_queue_transfers_without_copy(method):
    ctx = mp.get_context(method)
    q_in, q_out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    t = ember.arange(5, dtype=ember.float32)
    p = ctx.Process(target=_echo, args=(q_in, q_out, done))
    p.start()
    q_in.put(t)  # moved to shared memory on send, like torch
    back = q_out.get(timeout=60)
    total = q_out.get(timeout=60)
    done.set()
    p.join(60)
    assert t.is_shared()
    # the child's in-place write landed in the parent's tensor: no copy was made
    np.testing.assert_array_equal(t.numpy(), np.arange(5) * 2.0)
    assert total == 20.0
    back[0] = -1.0  # and the returned tensor aliases the same memory
    assert float(t[0]) == -1.0


def test_spawn_runs_fn_with_index_and_shared_args():
    t = ember.zeros(3).share_memory_()
    mp.spawn(_add_index, args=(t,), nprocs=3, start_method="fork")
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 3.0])
    ctx = mp.spawn(_add_index, args=(t,), nprocs=1, join=False, start_method="fork")
    while not ctx.join():
        pass
    assert len(ctx.pids()) == 1


def test_spawn_reraises_child_exception():
    with pytest.raises(mp.ProcessRaisedException, match="boom in child"):
        mp.spawn(_fail, nprocs=2, start_method="fork")


def test_non_leaf_requires_grad_refused():
    import pickle
    from multiprocessing.reduction import ForkingPickler
    x = ember.ones(2, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="Cowardly"):
        ForkingPickler.dumps(x)
    # plain pickle (ember.save, deepcopy) is untouched by the reducer
    y = pickle.loads(pickle.dumps(ember.ones(2)))
    assert not y.is_shared()


def _hogwild_worker(rank, model, x, y, steps):
    ember.manual_seed(rank)
    opt = ember.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = ember.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()


def test_hogwild_processes_update_one_shared_model():
    ember.manual_seed(0)
    x = ember.randn(64, 3)
    w_true = ember.tensor([[1.5], [-2.0], [0.5]])
    y = x @ w_true
    model = ember.nn.Linear(3, 1, bias=False)
    model.share_memory()
    assert all(p.is_shared() for p in model.parameters())
    loss0 = float(ember.nn.functional.mse_loss(model(x), y))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hogwild_worker, args=(r, model, x, y, 60)) for r in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    # the parent never trained: the fitted weights come only from the children's updates
    loss1 = float(ember.nn.functional.mse_loss(model(x), y))
    assert loss1 < loss0 * 1e-2
    np.testing.assert_allclose(model.weight.detach().numpy().ravel(), [1.5, -2.0, 0.5],
                               atol=0.05)


def test_pool_and_api_surface():
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
    assert mp.get_sharing_strategy() in mp.get_all_sharing_strategies()
    for name in ("Process", "Queue", "SimpleQueue", "Pool", "set_start_method",
                 "get_start_method", "get_context", "spawn"):
        assert hasattr(mp, name)


class _Squares(ember.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return ember.full((3,), float(i * i))


def test_dataloader_workers_unaffected_by_the_reducer():
    # DataLoader workers keep their own transport even with the tensor reducer registered
    loader = ember.utils.data.DataLoader(_Squares(), batch_size=5, num_workers=2)
    out = ember.cat([b for b in loader])
    np.testing.assert_array_equal(out[:, 0].numpy(), np.arange(10) ** 2)
