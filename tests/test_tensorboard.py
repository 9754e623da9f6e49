"""SummaryWriter: events read back with TensorBoard's own EventAccumulator."""
import os

import numpy as np
import pytest

import ember

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from ember.utils.tensorboard import SummaryWriter  # noqa: E402


def _acc(path):
    acc = EventAccumulator(str(path), size_guidance={"histograms": 0, "images": 0,
                                                     "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_histograms_images_text(tmp_path):
    with SummaryWriter(str(tmp_path)) as w:
        for step in range(3):
            w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_scalar("t", ember.tensor(2.5), 7)
        w.add_scalar("ns", 0.25, 3, new_style=True, double_precision=True)
        vals = ember.randn(1000)
        w.add_histogram("w", vals, 0)
        w.add_image("img", ember.rand(3, 4, 5), 1)
        w.add_image("hwc", np.zeros((4, 5, 3), np.uint8), 1, dataformats="HWC")
        w.add_images("batch", ember.rand(4, 3, 2, 2), 0)
        w.add_text("note", "hello ember", 2)
    acc = _acc(tmp_path)
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 2]
    np.testing.assert_allclose([e.value for e in loss], [1.0, 0.5, 1 / 3], rtol=1e-6)
    assert acc.Scalars("t")[0].value == 2.5 and acc.Scalars("t")[0].step == 7
    ns = acc.Tensors("ns")[0]
    assert ns.step == 3 and ns.tensor_proto.double_val[0] == 0.25
    h = acc.Histograms("w")[0].histogram_value
    assert h.num == 1000
    np.testing.assert_allclose(h.sum, float(vals.sum()), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(h.min, float(vals.min()), rtol=1e-6)
    assert sum(h.bucket) == 1000
    im = acc.Images("img")[0]
    assert (im.width, im.height) == (5, 4) and im.encoded_image_string[:4] == b"\x89PNG"
    assert acc.Images("batch")[0].width == 4
    t = acc.Tensors("note/text_summary")[0]
    assert t.tensor_proto.string_val[0] == b"hello ember"


def test_add_scalars_writes_one_run_per_tag(tmp_path):
    w = SummaryWriter(str(tmp_path))
    w.add_scalars("run", {"a": 1.0, "b": 2.0}, 0)
    w.add_scalars("run", {"a": 3.0, "b": 4.0}, 1)
    w.close()
    a = _acc(tmp_path / "run_a").Scalars("run")
    b = _acc(tmp_path / "run_b").Scalars("run")
    assert [e.value for e in a] == [1.0, 3.0] and [e.value for e in b] == [2.0, 4.0]


def test_add_hparams(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2
    w = SummaryWriter(str(tmp_path))
    w.add_hparams({"lr": 0.1, "opt": "sgd", "bn": True}, {"hparam/acc": 0.9}, run_name="r1")
    w.close()
    acc = _acc(tmp_path / "r1")
    assert acc.Scalars("hparam/acc")[0].value == pytest.approx(0.9)
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    hp = data.session_start_info.hparams
    assert hp["lr"].number_value == 0.1 and hp["opt"].string_value == "sgd"
    assert hp["bn"].bool_value is True
    with pytest.raises(TypeError):
        w.add_hparams([1], {})


def test_add_graph_records_module_dataflow(tmp_path):
    model = ember.nn.Sequential(ember.nn.Linear(4, 3), ember.nn.ReLU(), ember.nn.Linear(3, 2))
    with SummaryWriter(str(tmp_path)) as w:
        w.add_graph(model, ember.randn(1, 4))
    g = _acc(tmp_path).Graph()
    by_name = {n.name: n for n in g.node}
    assert by_name["Sequential/0"].op == "Linear"
    assert list(by_name["Sequential/1"].input) == ["Sequential/0"]
    assert list(by_name["Sequential/0"].input) == ["input/input.0"]
    assert list(by_name["output/output.0"].input) == ["Sequential/2"]


def test_default_logdir_and_flush(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = SummaryWriter(comment="_x")
    w.add_scalar("a", 1, 0)
    w.flush()
    assert w.get_logdir().startswith("runs") and w.get_logdir().endswith("_x")
    files = os.listdir(w.get_logdir())
    assert any(f.startswith("events.out.tfevents") for f in files)
    w.close()
