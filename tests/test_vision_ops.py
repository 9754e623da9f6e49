"""ember.vision.ops / utils / io vs NumPy references."""
import math

import numpy as np
import pytest

import ember
from ember.vision import io as vio
from ember.vision import ops, utils


def _rand_boxes(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2))
    wh = rng.uniform(1, 30, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _iou_np(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def _nms_np(boxes, scores, thr):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if _iou_np(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thr]
    return keep


def test_box_iou_area_convert():
    a, b = _rand_boxes(7, 0), _rand_boxes(5, 1)
    np.testing.assert_allclose(ops.box_iou(ember.tensor(a), ember.tensor(b)).numpy(),
                               _iou_np(a, b), rtol=1e-5)
    np.testing.assert_allclose(ops.box_area(ember.tensor(a)).numpy(),
                               (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), rtol=1e-6)
    t = ember.tensor(a)
    for fmt in ("xywh", "cxcywh"):
        back = ops.box_convert(ops.box_convert(t, "xyxy", fmt), fmt, "xyxy")
        np.testing.assert_allclose(back.numpy(), a, rtol=1e-5, atol=1e-4)
    cxcywh = ops.box_convert(t, "xyxy", "cxcywh").numpy()
    np.testing.assert_allclose(cxcywh[:, 0], (a[:, 0] + a[:, 2]) / 2, rtol=1e-6)
    with pytest.raises(ValueError):
        ops.box_convert(t, "xyxy", "yxyx")
    giou = ops.generalized_box_iou(t, t).numpy()
    np.testing.assert_allclose(np.diag(giou), 1.0, rtol=1e-6)
    assert (giou <= 1 + 1e-6).all() and (giou >= -1 - 1e-6).all()


@pytest.mark.parametrize("thr", [0.2, 0.5])
def test_nms_and_batched_nms(thr):
    boxes = _rand_boxes(30, 2)
    scores = np.random.default_rng(3).random(30).astype(np.float32)
    keep = ops.nms(ember.tensor(boxes), ember.tensor(scores), thr)
    assert keep.dtype == ember.int64
    assert keep.tolist() == _nms_np(boxes, scores, thr)
    idxs = np.random.default_rng(4).integers(0, 3, 30)
    kb = ops.batched_nms(ember.tensor(boxes), ember.tensor(scores), ember.tensor(idxs), thr)
    ref = []
    for c in range(3):
        sel = np.where(idxs == c)[0]
        ref += [sel[i] for i in _nms_np(boxes[sel], scores[sel], thr)]
    ref = sorted(ref, key=lambda i: -scores[i])
    assert kb.tolist() == ref
    assert ops.nms(ember.zeros(0, 4), ember.zeros(0), 0.5).numel() == 0


def _bilinear_np(f, y, x):
    h, w = f.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    return ((1 - ly) * (1 - lx) * f[:, yl, xl] + (1 - ly) * lx * f[:, yl, xh]
            + ly * (1 - lx) * f[:, yh, xl] + ly * lx * f[:, yh, xh])


def _roi_align_np(x, rois, ph, pw, scale, sr, aligned):
    out = np.zeros((len(rois), x.shape[1], ph, pw))
    off = 0.5 if aligned else 0.0
    for k, r in enumerate(rois):
        f = x[int(r[0])]
        x1, y1, x2, y2 = r[1:] * scale - off
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sr if sr > 0 else math.ceil(rh / ph)
        gw = sr if sr > 0 else math.ceil(rw / pw)
        for i in range(ph):
            for j in range(pw):
                acc = np.zeros(x.shape[1])
                for iy in range(gh):
                    yy = y1 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = x1 + j * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear_np(f, yy, xx)
                out[k, :, i, j] = acc / max(gh * gw, 1)
    return out


@pytest.mark.parametrize("sr,aligned,scale", [(2, False, 1.0), (-1, True, 0.5),
                                              (-1, False, 0.25)])
def test_roi_align_matches_reference(sr, aligned, scale):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 11))
    rois = np.array([[0, 1.0, 1.5, 8.0, 7.0], [1, -2.0, 0.0, 30.0, 20.0], [1, 3.3, 2.2, 4.1, 3.0]])
    out = ops.roi_align(ember.tensor(x), ember.tensor(rois), (3, 2), scale, sr, aligned)
    np.testing.assert_allclose(out.numpy(), _roi_align_np(x, rois, 3, 2, scale, sr, aligned),
                               rtol=1e-10, atol=1e-12)


def test_roi_align_backward_gradcheck():
    x = ember.randn(1, 2, 6, 7, dtype=ember.float64, requires_grad=True)
    boxes = [ember.tensor([[0.5, 0.5, 5.0, 4.5], [2.0, 1.0, 6.5, 5.5]], dtype=ember.float64)]
    assert ember.autograd.gradcheck(lambda t: ops.roi_align(t, boxes, 2, 1.0, 2, True), (x,))
    layer = ops.RoIAlign((2, 2), 1.0, 2)
    assert tuple(layer(x, boxes).shape) == (2, 2, 2, 2)


def test_roi_pool_matches_reference():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 8, 8))
    rois = np.array([[0, 0.0, 0.0, 5.0, 3.0], [0, 2.0, 2.0, 7.0, 7.0]])
    out = ops.roi_pool(ember.tensor(x), ember.tensor(rois), (2, 2), 1.0).numpy()
    ref = np.zeros((2, 2, 2, 2))
    for k, r in enumerate(rois):
        sw, sh, ew, eh = (int(math.floor(v + 0.5)) for v in r[1:])
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        for i in range(2):
            for j in range(2):
                hs = min(max(math.floor(i * rh / 2) + sh, 0), 8)
                he = min(max(math.ceil((i + 1) * rh / 2) + sh, 0), 8)
                ws = min(max(math.floor(j * rw / 2) + sw, 0), 8)
                we = min(max(math.ceil((j + 1) * rw / 2) + sw, 0), 8)
                ref[k, :, i, j] = x[0, :, hs:he, ws:we].reshape(2, -1).max(1)
    np.testing.assert_allclose(out, ref)
    xt = ember.tensor(x, requires_grad=True)
    ops.roi_pool(xt, ember.tensor(rois), 2).sum().backward()
    assert float(xt.grad.sum()) == 16.0  # one max per bin per channel


def test_stochastic_depth_and_misc():
    x = ember.ones(1000, 4)
    assert (ops.stochastic_depth(x, 0.3, "row", training=False) == x).all()
    ember.manual_seed(0)
    y = ops.stochastic_depth(x, 0.3, "row").numpy()
    kept = (y[:, 0] > 0).mean()
    assert 0.6 < kept < 0.8 and np.allclose(y[y > 0], 1 / 0.7)
    with pytest.raises(ValueError):
        ops.stochastic_depth(x, 1.5, "row")
    se = ops.SqueezeExcitation(8, 2)
    assert tuple(se(ember.randn(2, 8, 4, 4)).shape) == (2, 8, 4, 4)
    loss = ops.sigmoid_focal_loss(ember.tensor([0.0]), ember.tensor([1.0]), reduction="sum")
    np.testing.assert_allclose(float(loss), 0.25 * 0.25 * math.log(2), rtol=1e-6)


def test_make_grid_layout():
    x = ember.rand(5, 3, 4, 4)
    g = utils.make_grid(x, nrow=3, padding=1, pad_value=0.5).numpy()
    assert g.shape == (3, 2 * 5 + 1, 3 * 5 + 1)
    np.testing.assert_allclose(g[:, 1:5, 6:10], x.numpy()[1])
    np.testing.assert_allclose(g[:, 6:10, 6:10], x.numpy()[4])
    assert np.allclose(g[:, 0], 0.5) and np.allclose(g[:, 6:10, 11:15], 0.5)
    n = utils.make_grid(x * 10 - 3, normalize=True).numpy()
    assert n.min() >= 0 and n.max() <= 1
    assert tuple(utils.make_grid(ember.rand(1, 4, 4)).shape) == (3, 4, 4)


def test_save_read_write_image(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    x = ember.rand(2, 3, 4, 5)
    utils.save_image(x, tmp_path / "g.png", nrow=2, padding=0)
    arr = np.asarray(Image.open(tmp_path / "g.png"))
    ref = np.clip(np.concatenate([x.numpy()[0], x.numpy()[1]], 2) * 255 + 0.5, 0, 255)
    np.testing.assert_array_equal(arr, ref.astype(np.uint8).transpose(1, 2, 0))
    img = vio.read_image(str(tmp_path / "g.png"))
    assert img.dtype == ember.uint8 and tuple(img.shape) == (3, 4, 10)
    np.testing.assert_array_equal(img.numpy(), arr.transpose(2, 0, 1))
    gray = vio.read_image(str(tmp_path / "g.png"), vio.ImageReadMode.GRAY)
    np.testing.assert_array_equal(gray.numpy()[0],
                                  np.asarray(Image.open(tmp_path / "g.png").convert("L")))
    vio.write_png(img, str(tmp_path / "w.png"))
    np.testing.assert_array_equal(vio.decode_image(vio.read_file(str(tmp_path / "w.png"))).numpy(),
                                  img.numpy())
    jpg = vio.encode_jpeg(img, quality=95)
    assert tuple(vio.decode_jpeg(jpg).shape) == (3, 4, 10)
    with pytest.raises(RuntimeError):
        vio.decode_png(jpg)


def test_draw_bounding_boxes():
    img = ember.zeros(3, 10, 10, dtype=ember.uint8)
    out = utils.draw_bounding_boxes(img, ember.tensor([[1, 2, 6, 8]]), colors="red", width=1)
    a = out.numpy()
    assert (a[:, 2, 1:7] == np.array([255, 0, 0])[:, None]).all()
    assert (a[:, 3:8, 3] == 0).all()  # inside stays untouched
    with pytest.raises(ValueError):
        utils.draw_bounding_boxes(img, ember.tensor([[6, 2, 1, 8]]))
