"""Finite-difference checks of analytical gradients: ``gradcheck`` and ``gradgradcheck``."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ember.tensor import Tensor


class GradcheckError(RuntimeError):
    """Raised by gradcheck when analytical and numerical Jacobians differ."""


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _diff_inputs(inputs: tuple) -> list[int]:
    return [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]


def _numerical_jacobian(fn: Callable, inputs: tuple, outputs: tuple, eps: float) -> list:
    """J[i][o]: (numel(out o), numel(in i)) by central differences."""
    import ember
    jac = []
    if True:  # grad mode stays on: gradgradcheck's function differentiates inside
        for i in _diff_inputs(inputs):
            x = inputs[i]
            flat = x._data.reshape(-1) if x._data.flags.c_contiguous else None
            if flat is None:
                raise GradcheckError("gradcheck expects contiguous inputs")
            cols = [np.zeros((o.numel(), x.numel()), dtype=np.complex128 if o.is_complex()
                             else np.float64) for o in outputs]
            for j in range(x.numel()):
                orig = flat[j].copy()
                flat[j] = orig + eps
                # copy: a view op's output would otherwise follow the restored input
                plus = [o.detach().clone() if isinstance(o, Tensor) else o
                        for o in _as_tuple(fn(*inputs))]
                flat[j] = orig - eps
                minus = [o.detach().clone() if isinstance(o, Tensor) else o
                         for o in _as_tuple(fn(*inputs))]
                flat[j] = orig
                for k, (p, m) in enumerate(zip(plus, minus)):
                    if isinstance(p, Tensor) and p.is_floating_point() or (
                            isinstance(p, Tensor) and p.is_complex()):
                        kind = np.complex128 if p.is_complex() else np.float64
                        d = np.asarray(p._host(), kind) - np.asarray(m._host(), kind)
                        cols[k][:, j] = (d / (2 * eps)).reshape(-1)
            jac.append(cols)
    return jac


def _analytical_jacobian(inputs: tuple, outputs: tuple) -> list:
    import ember
    diff = _diff_inputs(inputs)
    jac = [[np.zeros((o.numel(), inputs[i].numel())) for o in outputs] for i in diff]
    for k, out in enumerate(outputs):
        if not (isinstance(out, Tensor) and out.requires_grad):
            continue
        for r in range(out.numel()):
            # C order, so the flat index r is row r of the Jacobian (zeros_like would keep a
            # permuted output's strides and reshape(-1) would then copy)
            g = ember.zeros_like(out, memory_format=ember.contiguous_format)
            g._data.reshape(-1)[r] = 1
            grads = ember.autograd.grad(out, [inputs[i] for i in diff], g, retain_graph=True,
                                        allow_unused=True)
            for n, gi in enumerate(grads):
                if gi is not None:
                    jac[n][k][r, :] = np.asarray(gi._host(), np.float64).reshape(-1)
    return jac


def gradcheck(func: Callable, inputs: Any, *, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, raise_exception: bool = True, nondet_tol: float = 0.0,
              check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
              check_batched_grad: bool = False, fast_mode: bool = False,
              masked: bool | None = None) -> bool:
    """Compare autograd's gradients of ``func`` with central finite differences.

    Args:
        func: takes the tensors in ``inputs`` and returns a Tensor or tuple of Tensors.
        inputs: tensors (float64, ``requires_grad=True`` for those to check).
        eps, atol, rtol: finite-difference step and tolerances.
        raise_exception: raise ``GradcheckError`` on mismatch instead of returning False.
    """
    inputs = _as_tuple(inputs)
    for i in _diff_inputs(inputs):
        if inputs[i].dtype.name not in ("float64", "complex128"):
            import warnings
            warnings.warn(f"Input #{i} requires gradient and is not a double precision floating "
                          "point. gradcheck may fail due to precision.", UserWarning)
    outputs = _as_tuple(func(*inputs))
    outputs = tuple(o for o in outputs if isinstance(o, Tensor))
    numerical = _numerical_jacobian(func, inputs, outputs, eps)
    analytical = _analytical_jacobian(inputs, outputs)
    for n, i in enumerate(_diff_inputs(inputs)):
        for k in range(len(outputs)):
            a, nmr = analytical[n][k], numerical[n][k]
            if nmr.dtype.kind == "c":
                nmr = nmr.real
            if not np.allclose(a, nmr, rtol=rtol, atol=atol):
                msg = (f"Jacobian mismatch for output {k} with respect to input {i},\n"
                       f"numerical:{nmr}\nanalytical:{a}\n")
                if raise_exception:
                    raise GradcheckError(msg)
                return False
    return True


def gradgradcheck(func: Callable, inputs: Any, grad_outputs: Any = None, *, eps: float = 1e-6,
                  atol: float = 1e-5, rtol: float = 1e-3, gen_non_contig_grad_outputs: bool = False,
                  raise_exception: bool = True, nondet_tol: float = 0.0,
                  check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
                  check_batched_grad: bool = False, check_fwd_over_rev: bool = False,
                  check_rev_over_rev: bool = True, fast_mode: bool = False,
                  masked: bool = False) -> bool:
    """Check second derivatives: gradcheck of the map (inputs, v) -> vjp(func, inputs, v)."""
    import ember
    inputs = _as_tuple(inputs)
    outputs = _as_tuple(func(*inputs))
    if grad_outputs is None:
        gen = np.random.default_rng(0)
        grad_outputs = tuple(
            ember.tensor(gen.standard_normal(o.shape), dtype=o.dtype, requires_grad=True)
            for o in outputs if isinstance(o, Tensor) and o.requires_grad)
    grad_outputs = _as_tuple(grad_outputs)
    n_in = len(inputs)
    diff = _diff_inputs(inputs)

    def new_func(*all_inputs: Any) -> tuple:
        ins = all_inputs[:n_in]
        gos = all_inputs[n_in:]
        outs = _as_tuple(func(*ins))
        outs = [o for o in outs if isinstance(o, Tensor) and o.requires_grad]
        grads = ember.autograd.grad(outs, [ins[i] for i in diff], gos, create_graph=True,
                                    allow_unused=True)
        return tuple(g for g in grads if g is not None)

    return gradcheck(new_func, inputs + grad_outputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception)
