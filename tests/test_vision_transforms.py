"""ember.vision.transforms vs PIL/NumPy references (torchvision is not installable here)."""
import math

import numpy as np
import pytest

import ember
from ember.vision import transforms as T
from ember.vision.transforms import functional as F

Image = pytest.importorskip("PIL.Image")


def _img(h=12, w=16, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    c = 3 if mode == "RGB" else 1
    arr = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    return Image.fromarray(arr if c == 3 else arr[:, :, 0], mode)


def _np(img):
    return np.asarray(img)


def _chw(img):
    a = np.asarray(img)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def test_to_tensor_and_pil_roundtrip():
    img = _img()
    t = T.ToTensor()(img)
    assert t.dtype == ember.float32 and tuple(t.shape) == (3, 12, 16)
    np.testing.assert_allclose(t.numpy(), _chw(img) / 255.0, rtol=0, atol=1e-7)
    p = T.PILToTensor()(img)
    assert p.dtype == ember.uint8
    np.testing.assert_array_equal(p.numpy(), _chw(img))
    np.testing.assert_array_equal(_np(T.ToPILImage()(p)), _np(img))
    back = F.to_pil_image(t)
    np.testing.assert_array_equal(_np(back), (_chw(img) / 255.0 * 255).astype(np.uint8)
                                  .transpose(1, 2, 0))
    gray = F.to_tensor(_img(mode="L"))
    assert tuple(gray.shape) == (1, 12, 16)


def test_normalize_and_convert_dtype():
    x = ember.rand(3, 4, 5)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    ref = (x.numpy() - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(T.Normalize(mean, std)(x).numpy(), ref, rtol=1e-6)
    u = ember.tensor([[[0, 128, 255]]], dtype=ember.uint8)
    np.testing.assert_allclose(F.convert_image_dtype(u, ember.float32).numpy(),
                               [[[0, 128 / 255, 1.0]]], rtol=1e-6)
    f = ember.tensor([[[0.0, 0.5, 1.0]]])
    np.testing.assert_array_equal(F.convert_image_dtype(f, ember.uint8).numpy(),
                                  [[[0, 127, 255]]])
    with pytest.raises(TypeError):
        F.normalize(u, [0.5], [0.5])


@pytest.mark.parametrize("size", [8, (6, 10), [20]])
def test_resize_pil_matches_pillow(size):
    img = _img()
    out = T.Resize(size)(img)
    h, w = 12, 16
    if isinstance(size, int) or len(size) == 1:
        s = size if isinstance(size, int) else size[0]
        exp = (s, int(s * w / h))
    else:
        exp = tuple(size)
    np.testing.assert_array_equal(_np(out), _np(img.resize(exp[::-1], Image.BILINEAR)))


def test_resize_tensor_antialias_close_to_pil():
    img = _img(24, 32, seed=1)
    t = F.pil_to_tensor(img)
    out = F.resize(t, [12, 16], antialias=True)
    ref = _chw(img.resize((16, 12), Image.BILINEAR)).astype(np.int32)
    # PIL and torch's antialiased kernel agree up to integer rounding
    assert np.abs(out.numpy().astype(np.int32) - ref).max() <= 1
    near = F.resize(t, [6, 8], interpolation=T.InterpolationMode.NEAREST)
    np.testing.assert_array_equal(near.numpy(), t.numpy()[:, ::4, ::4])
    with pytest.raises(ValueError):
        F.resize(t, [6, 8], max_size=10)


def test_crops_and_flips_match_numpy():
    img = _img()
    a = _np(img)
    t = F.pil_to_tensor(img)
    np.testing.assert_array_equal(_np(F.crop(img, 2, 3, 5, 6)), a[2:7, 3:9])
    np.testing.assert_array_equal(F.crop(t, 2, 3, 5, 6).numpy(), _chw(img)[:, 2:7, 3:9])
    # out of bounds crop on tensors zero pads, like torchvision
    oob = F.crop(t, -2, -1, 4, 4).numpy()
    assert (oob[:, :2] == 0).all() and (oob[:, 2:, 1:] == _chw(img)[:, :2, :3]).all()
    cc = F.center_crop(t, [4, 6]).numpy()
    top, left = int(round((12 - 4) / 2)), int(round((16 - 6) / 2))
    np.testing.assert_array_equal(cc, _chw(img)[:, top:top + 4, left:left + 6])
    np.testing.assert_array_equal(_np(T.CenterCrop((4, 6))(img)), a[top:top + 4, left:left + 6])
    big = F.center_crop(t, [14, 18]).numpy()
    assert big.shape == (3, 14, 18) and (big[:, 0] == 0).all()
    np.testing.assert_array_equal(F.hflip(t).numpy(), _chw(img)[:, :, ::-1])
    np.testing.assert_array_equal(_np(F.vflip(img)), a[::-1])
    tl, tr, bl, br, c = F.five_crop(t, 4)
    np.testing.assert_array_equal(br.numpy(), _chw(img)[:, -4:, -4:])
    assert len(F.ten_crop(img, 4)) == 10


@pytest.mark.parametrize("mode,np_mode", [("constant", "constant"), ("edge", "edge"),
                                          ("reflect", "reflect"),
                                          ("symmetric", "symmetric")])
def test_pad_modes(mode, np_mode):
    img = _img(5, 6)
    t = F.pil_to_tensor(img)
    pad = [1, 2, 3, 1]  # left, top, right, bottom
    ref = np.pad(_chw(img), ((0, 0), (2, 1), (1, 3)), mode=np_mode)
    np.testing.assert_array_equal(F.pad(t, pad, padding_mode=mode).numpy(), ref)
    np.testing.assert_array_equal(_chw(F.pad(img, pad, padding_mode=mode)), ref)
    assert tuple(F.pad(t.float(), 2, fill=0.5).shape) == (3, 9, 10)


def test_random_crop_get_params_replay():
    img = _img()
    t = F.pil_to_tensor(img)
    ember.manual_seed(3)
    out = T.RandomCrop(5, padding=2, padding_mode="reflect")(t)
    ember.manual_seed(3)
    padded = F.pad(t, 2, padding_mode="reflect")
    i, j, h, w = T.RandomCrop.get_params(padded, (5, 5))
    np.testing.assert_array_equal(out.numpy(), padded.numpy()[:, i:i + h, j:j + w])
    out2 = T.RandomCrop((20, 20), pad_if_needed=True)(t)
    assert tuple(out2.shape) == (3, 20, 20)


def test_random_resized_crop_reproducible_and_params_valid():
    img = _img(40, 50)
    ember.manual_seed(0)
    a = T.RandomResizedCrop(16)(img)
    ember.manual_seed(0)
    i, j, h, w = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
    ref = img.crop((j, i, j + w, i + h)).resize((16, 16), Image.BILINEAR)
    np.testing.assert_array_equal(_np(a), _np(ref))
    assert 0 < h <= 40 and 0 < w <= 50


def test_flip_probability_uses_ember_rng():
    t = ember.arange(6.0).reshape(1, 2, 3)
    ember.manual_seed(1)
    r1 = [bool((T.RandomHorizontalFlip()(t) != t).any()) for _ in range(20)]
    ember.manual_seed(1)
    r2 = [bool((T.RandomHorizontalFlip()(t) != t).any()) for _ in range(20)]
    assert r1 == r2 and any(r1) and not all(r1)
    assert (T.RandomVerticalFlip(p=1.0)(t).numpy() == t.numpy()[:, ::-1]).all()


def test_rotate_90_matches_rot90():
    t = ember.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_allclose(F.rotate(t, 90).numpy(), np.rot90(t.numpy(), 1, (1, 2)),
                               atol=1e-5)
    img = _img(8, 8)
    np.testing.assert_array_equal(_np(F.rotate(img, 90)), _np(img.rotate(90)))
    exp = F.rotate(ember.ones(1, 4, 8), 90, expand=True)
    assert tuple(exp.shape) == (1, 8, 4)


def test_affine_pil_uses_inverse_matrix():
    img = _img(10, 10)
    out = F.affine(img, angle=0.0, translate=[2, 1], scale=1.0, shear=0.0)
    ref = img.transform((10, 10), Image.AFFINE, (1, 0, -2, 0, 1, -1), Image.NEAREST)
    np.testing.assert_array_equal(_np(out), _np(ref))
    # tensor path: a pure integer translation shifts the pixels, zeros come in
    t = ember.arange(1.0, 26.0).reshape(1, 5, 5)
    moved = F.affine(t, angle=0.0, translate=[1, 0], scale=1.0, shear=[0.0, 0.0]).numpy()
    np.testing.assert_allclose(moved[0, :, 1:], t.numpy()[0, :, :-1], atol=1e-5)
    assert (moved[0, :, 0] == 0).all()


def test_perspective_identity_and_pil():
    t = ember.rand(3, 8, 8)
    pts = [[0, 0], [7, 0], [7, 7], [0, 7]]
    np.testing.assert_allclose(F.perspective(t, pts, pts).numpy(), t.numpy(), atol=1e-5)
    img = _img(8, 8)
    end = [[1, 0], [7, 1], [6, 7], [0, 6]]
    coeffs = F._get_perspective_coeffs(pts, end)
    ref = img.transform((8, 8), Image.PERSPECTIVE, coeffs, Image.BILINEAR)
    np.testing.assert_array_equal(_np(F.perspective(img, pts, end)), _np(ref))


def test_color_adjustments_tensor_formulas():
    x = ember.rand(3, 5, 6)
    a = x.numpy()
    np.testing.assert_allclose(F.adjust_brightness(x, 1.5).numpy(), np.clip(a * 1.5, 0, 1),
                               rtol=1e-6)
    gray = 0.2989 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    np.testing.assert_allclose(F.rgb_to_grayscale(x).numpy()[0], gray, rtol=1e-5)
    np.testing.assert_allclose(F.adjust_contrast(x, 0.5).numpy(),
                               np.clip(0.5 * a + 0.5 * gray.mean(), 0, 1), rtol=1e-5)
    np.testing.assert_allclose(F.adjust_saturation(x, 0.0).numpy(),
                               np.broadcast_to(gray, a.shape), rtol=1e-5, atol=1e-6)
    # a full turn of hue is the identity; half a turn of pure red is cyan
    red = ember.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    np.testing.assert_allclose(F.adjust_hue(red, 0.5).numpy().ravel(), [0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(F.adjust_hue(x, 0.0).numpy(), a, atol=1e-5)
    np.testing.assert_allclose(F.adjust_gamma(x, 2.0).numpy(), a ** 2, rtol=1e-5)
    np.testing.assert_allclose(F.invert(x).numpy(), 1 - a, rtol=1e-6)


def test_color_adjustments_pil_match_pillow():
    from PIL import ImageEnhance, ImageOps
    img = _img()
    np.testing.assert_array_equal(_np(F.adjust_brightness(img, 1.3)),
                                  _np(ImageEnhance.Brightness(img).enhance(1.3)))
    np.testing.assert_array_equal(_np(F.adjust_contrast(img, 0.7)),
                                  _np(ImageEnhance.Contrast(img).enhance(0.7)))
    np.testing.assert_array_equal(_np(F.equalize(img)), _np(ImageOps.equalize(img)))
    np.testing.assert_array_equal(_np(F.posterize(img, 3)), _np(ImageOps.posterize(img, 3)))
    np.testing.assert_array_equal(_np(F.to_grayscale(img)), _np(img.convert("L")))


def test_uint8_tensor_ops_match_pil_ops():
    img = _img(seed=4)
    t = F.pil_to_tensor(img)
    from PIL import ImageOps
    np.testing.assert_array_equal(F.posterize(t, 3).numpy(), _chw(ImageOps.posterize(img, 3)))
    np.testing.assert_array_equal(F.solarize(t, 100).numpy(), _chw(ImageOps.solarize(img, 100)))
    np.testing.assert_array_equal(F.invert(t).numpy(), 255 - _chw(img))
    np.testing.assert_array_equal(F.equalize(t).numpy(), _chw(ImageOps.equalize(img)))
    ac = F.autocontrast(t).numpy()
    assert ac.reshape(3, -1).min(1).tolist() == [0, 0, 0]
    assert ac.reshape(3, -1).max(1).tolist() == [255, 255, 255]


def test_gaussian_blur_matches_numpy_reference():
    x = ember.rand(1, 7, 9)
    k, s = 3, 0.8
    xs = np.linspace(-1, 1, 3)
    k1 = np.exp(-0.5 * (xs / s) ** 2)
    k1 /= k1.sum()
    kern = np.outer(k1, k1)
    p = np.pad(x.numpy()[0], 1, mode="reflect")
    ref = np.zeros((7, 9))
    for i in range(7):
        for j in range(9):
            ref[i, j] = (p[i:i + 3, j:j + 3] * kern).sum()
    np.testing.assert_allclose(F.gaussian_blur(x, [k, k], [s, s]).numpy()[0], ref, rtol=1e-5)
    assert F.gaussian_blur(_img(), 3).size == (16, 12)
    with pytest.raises(ValueError):
        F.gaussian_blur(x, 4)


def test_random_erasing_and_color_jitter_replay():
    x = ember.rand(3, 10, 10)
    ember.manual_seed(5)
    out = T.RandomErasing(p=1.0, value=0.5)(x)
    ember.manual_seed(5)
    ember.rand(1)  # the p draw
    i, j, h, w, v = T.RandomErasing.get_params(x, (0.02, 0.33), (0.3, 3.3), [0.5])
    ref = x.numpy().copy()
    ref[:, i:i + h, j:j + w] = 0.5
    np.testing.assert_allclose(out.numpy(), ref)
    cj = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    ember.manual_seed(2)
    y = cj(x)
    ember.manual_seed(2)
    fn_idx, b, c, s, hh = T.ColorJitter.get_params(cj.brightness, cj.contrast, cj.saturation,
                                                   cj.hue)
    ref = x
    for f in fn_idx.tolist():
        ref = [lambda r: F.adjust_brightness(r, b), lambda r: F.adjust_contrast(r, c),
               lambda r: F.adjust_saturation(r, s), lambda r: F.adjust_hue(r, hh)][f](ref)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), atol=1e-6)


def test_random_containers_and_lambda():
    x = ember.ones(1, 2, 2)
    assert (T.RandomApply([T.Lambda(lambda t: t * 2)], p=1.0)(x) == 2).all()
    assert (T.RandomApply([T.Lambda(lambda t: t * 2)], p=0.0)(x) == 1).all()
    out = T.RandomChoice([T.Lambda(lambda t: t + 1), T.Lambda(lambda t: t + 2)])(x)
    assert float(out[0, 0, 0]) in (2.0, 3.0)
    out = T.RandomOrder([T.Lambda(lambda t: t + 1), T.Lambda(lambda t: t * 3)])(x)
    assert float(out[0, 0, 0]) in (4.0, 6.0)
    with pytest.raises(TypeError):
        T.Lambda(3)


@pytest.mark.parametrize("aug", [T.AutoAugment(), T.RandAugment(), T.TrivialAugmentWide(),
                                 T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)])
def test_auto_augment_policies_run_and_reproduce(aug):
    img = _img(16, 16)
    t = F.pil_to_tensor(img)
    for src in (img, t):
        ember.manual_seed(11)
        a = aug(src)
        ember.manual_seed(11)
        b = aug(src)
        np.testing.assert_array_equal(np.asarray(a if not isinstance(a, ember.Tensor)
                                                 else a.numpy()),
                                      np.asarray(b if not isinstance(b, ember.Tensor)
                                                 else b.numpy()))


def test_geometry_random_transforms_shapes():
    img = _img(16, 16)
    t = F.pil_to_tensor(img)
    for tr in (T.RandomRotation(30), T.RandomAffine(15, (0.1, 0.1), (0.9, 1.1), 5),
               T.RandomPerspective(p=1.0), T.Grayscale(3), T.RandomGrayscale(1.0),
               T.GaussianBlur(3, (0.1, 1.0))):
        assert tuple(tr(t).shape)[-2:] == (16, 16)
        assert tr(img).size == (16, 16)
    composed = T.Compose([T.RandomResizedCrop(8), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize([0.5] * 3, [0.5] * 3)])
    assert tuple(composed(img).shape) == (3, 8, 8)
    assert "Compose(" in repr(composed)


class _CropParams(ember.utils.data.Dataset):
    """Each item: the crop box RandomResizedCrop draws for the same 40x50 image."""

    def __init__(self):
        self.img = ember.zeros(3, 40, 50)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return ember.tensor(T.RandomResizedCrop.get_params(self.img, (0.08, 1.0), (0.75, 1.33)))


def test_dataloader_workers_draw_different_reproducible_params():
    def run():
        ember.manual_seed(123)
        loader = ember.utils.data.DataLoader(_CropParams(), batch_size=4, num_workers=2)
        return [b.numpy() for b in loader]
    a, b = run(), run()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # same seed, same augmentations
    # the two workers (one batch each) do not replay the same stream
    assert not np.array_equal(a[0], a[1])
