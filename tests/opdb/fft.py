"""Records for ember.fft (issue: ops breadth, part 2). Complex outputs are compared as they
are against NumPy and torch; for gradients each record returns the real and imaginary parts
(real-valued losses), and complex inputs are built from two real arrays inside the call."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample

ENTRIES: list = []
F = ("float32", "float64")


def _real(m, z):
    """Real part, differentiable, on either framework."""
    if hasattr(m, "real") and callable(m.real):
        return m.real(z)
    from ember.ops.linalg_solve import real
    return real(z)


def _parts(m, z):
    if not z.is_complex():
        return z
    return _real(m, z), _real(m, z * -1j)


def _cplx(m, re, im):
    dt = m.complex64 if re.dtype == m.float32 else m.complex128
    return re.to(dt) + im.to(dt) * 1j


def _np_parts(z):
    z = np.asarray(z)
    return (z.real, z.imag) if np.iscomplexobj(z) else z


_ND = {"fft2", "ifft2", "rfft2", "irfft2", "hfft2", "ihfft2"}


def _np_call(name, x, **kw):
    """NumPy's reference for torch.fft.<name> (hfft2/hfftn via their definitions)."""
    kw = dict(kw)
    if "dim" in kw:
        kw["axis" if name[-1] not in "2n" else "axes"] = kw.pop("dim")
    if name in ("hfftn", "hfft2"):
        axes = kw.pop("axes", None)
        s = kw.pop("s", None)
        norm = kw.pop("norm", None)
        if axes is None:
            axes = tuple(range(x.ndim)) if name == "hfftn" and s is None else (-2, -1)
        inv = {"backward": "forward", "forward": "backward", "ortho": "ortho", None: "forward"}
        return np.fft.irfftn(np.conj(x), s=s, axes=axes, norm=inv[norm])
    if name in ("ihfftn", "ihfft2"):
        axes = kw.pop("axes", None)
        s = kw.pop("s", None)
        norm = kw.pop("norm", None)
        if axes is None:
            axes = tuple(range(x.ndim)) if name == "ihfftn" and s is None else (-2, -1)
        inv = {"backward": "forward", "forward": "backward", "ortho": "ortho", None: "forward"}
        return np.conj(np.fft.rfftn(x, s=s, axes=axes, norm=inv[norm]))
    return getattr(np.fft, name)(x, **kw)


def _entry(name, samples, complex_in=True, real_in=True, covers=()):
    def call(m, *args, **kw):
        if len(args) == 2:
            x = _cplx(m, *args)
        else:
            x = args[0]
        return _parts(m, getattr(m.fft, name)(x, **kw))

    def ref(*args, **kw):
        x = args[0] + 1j * args[1] if len(args) == 2 else args[0]
        return _np_parts(_np_call(name, x, **kw))

    def all_samples(rng):
        out = []
        for shape, kw, nc in samples:
            if real_in:
                out.append(Sample((rng.uniform(-1, 1, shape),), dict(kw), noncontig=nc))
            if complex_in:
                out.append(Sample((rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)),
                                  dict(kw), noncontig=nc, name=f"complex {shape} {kw}"))
        return out
    def grad_samples(rng):  # gradcheck on the first shape only (real and complex input)
        return all_samples(rng)[:2]
    return OpEntry(f"fft.{name}", call, all_samples, ref=ref, dtypes=F,
                   covers=(f"fft_{name}",) + tuple(covers), atol=1e-6, rtol=1e-5,
                   grad_samples=grad_samples)


_1D = [((5,), {}, False), ((3, 4), {"n": 6}, False), ((3, 4), {"dim": 0, "norm": "ortho"}, False),
       ((4, 3), {"n": 2, "norm": "forward"}, True)]
_2D = [((3, 4), {}, False), ((2, 3, 4), {"s": (4, 3)}, False),
       ((3, 4, 2), {"dim": (0, 1), "norm": "ortho"}, True)]
_NDS = [((3, 4), {}, False), ((2, 3, 4), {"s": (3, 5), "norm": "forward"}, False),
        ((2, 3, 4), {"dim": (0, 2)}, False)]

_bad_n = ErrorInput(Sample((np.ones(4),), {"n": 0}), RuntimeError, "Invalid number of data points")

ENTRIES.extend([
    _entry("fft", _1D, covers=("_fft_c2c", "_fft_r2c")),
    _entry("ifft", _1D),
    _entry("rfft", _1D, complex_in=False),
    _entry("irfft", _1D, covers=("_fft_c2r",)),
    _entry("hfft", _1D),
    _entry("ihfft", _1D, complex_in=False),
    _entry("fft2", _2D), _entry("ifft2", _2D), _entry("rfft2", _2D, complex_in=False),
    _entry("irfft2", _2D), _entry("hfft2", _2D), _entry("ihfft2", _2D, complex_in=False),
    _entry("fftn", _NDS), _entry("ifftn", _NDS), _entry("rfftn", _NDS, complex_in=False),
    _entry("irfftn", _NDS), _entry("hfftn", _NDS), _entry("ihfftn", _NDS, complex_in=False),
])
ENTRIES[0].errors = [_bad_n]
ENTRIES[2].errors = [ErrorInput(Sample((np.ones(4),), {"norm": "bogus"}), RuntimeError,
                                "Invalid normalization mode")]

ENTRIES.extend([
    OpEntry("fft.fftfreq", lambda m, n, **k: m.fft.fftfreq(n, **k),
            lambda rng: [Sample((5,)), Sample((6,), {"d": 0.5}), Sample((1,))],
            ref=lambda n, d=1.0: np.fft.fftfreq(n, d), grad=False, covers=("fft_fftfreq",)),
    OpEntry("fft.rfftfreq", lambda m, n, **k: m.fft.rfftfreq(n, **k),
            lambda rng: [Sample((5,)), Sample((6,), {"d": 0.25})],
            ref=lambda n, d=1.0: np.fft.rfftfreq(n, d), grad=False, covers=("fft_rfftfreq",)),
    OpEntry("fft.fftshift", lambda m, x, **k: m.fft.fftshift(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (5,)),)),
                         Sample((rng.uniform(-1, 1, (4, 5)),), {"dim": 1}),
                         Sample((rng.uniform(-1, 1, (4, 5)),), {"dim": (0, 1)}),
                         Sample((rng.uniform(-1, 1, (4, 5)),), noncontig=True)],
            ref=lambda x, dim=None: np.fft.fftshift(x, dim), dtypes=F + ("int64",),
            covers=("fft_fftshift",)),
    OpEntry("fft.ifftshift", lambda m, x, **k: m.fft.ifftshift(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (5,)),)),
                         Sample((rng.uniform(-1, 1, (4, 5)),), {"dim": -1})],
            ref=lambda x, dim=None: np.fft.ifftshift(x, dim), dtypes=F + ("int64",),
            covers=("fft_ifftshift",)),
])
