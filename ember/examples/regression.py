"""Fit a polynomial with autograd and a custom ``autograd.Function``.

    python -m ember.examples.regression [--steps 2000] [--degree 3] [--seed 0]

The target is ``sin(x)`` on ``[-pi, pi]``. The model evaluates the polynomial with a custom
Function (Horner's rule forward, analytic gradients in backward), and the example checks
those gradients with ``ember.autograd.gradcheck`` before training with Adam.
"""
from __future__ import annotations

import argparse
import math

import ember


class Horner(ember.autograd.Function):
    """``p(x) = sum_k c[k] x**k`` evaluated by Horner's rule.

    Backward: dp/dc[k] = x**k and dp/dx = sum_k k c[k] x**(k-1), both summed against the
    incoming gradient.
    """

    @staticmethod
    def forward(ctx, x: ember.Tensor, coeffs: ember.Tensor) -> ember.Tensor:
        out = ember.zeros_like(x)
        for k in range(coeffs.shape[0] - 1, -1, -1):
            out = out * x + coeffs[k]
        ctx.save_for_backward(x, coeffs)
        return out

    @staticmethod
    def backward(ctx, grad: ember.Tensor) -> tuple:
        x, coeffs = ctx.saved_tensors
        n = coeffs.shape[0]
        powers = ember.stack([x ** k for k in range(n)])          # (n, N)
        grad_coeffs = (powers * grad).sum(1)
        deriv = ember.zeros_like(x)
        for k in range(n - 1, 0, -1):
            deriv = deriv * x + k * coeffs[k]
        return grad * deriv, grad_coeffs


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(description="polynomial regression with autograd")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--degree", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    ember.manual_seed(args.seed)
    x = ember.linspace(-math.pi, math.pi, 2000, dtype=ember.float64)
    y = ember.sin(x)
    coeffs = ember.randn(args.degree + 1, dtype=ember.float64, requires_grad=True)

    # Check the hand-written backward against finite differences first.
    xs = ember.rand(5, dtype=ember.float64, requires_grad=True)
    cs = ember.randn(args.degree + 1, dtype=ember.float64, requires_grad=True)
    assert ember.autograd.gradcheck(Horner.apply, (xs, cs))
    print("gradcheck of the custom Function: ok")

    opt = ember.optim.Adam([coeffs], lr=args.lr)
    for step in range(args.steps):
        pred = Horner.apply(x, coeffs)
        loss = (pred - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(args.steps // 5, 1) == 0:
            print(f"step {step:5d}  loss {loss.item():.6f}")
    terms = " + ".join(f"{c:.4f} x^{k}" for k, c in enumerate(coeffs.tolist()))
    print(f"result: y = {terms}")
    return {"loss": float(loss), "coeffs": coeffs.tolist()}


if __name__ == "__main__":
    main()
