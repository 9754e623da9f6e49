"""Functional attention: ``scaled_dot_product_attention`` (the fused primitive of
``ember/ops/nn_attention.py``) and ``multi_head_attention_forward``, the computation behind
``nn.MultiheadAttention``, ported from torch's so masks, shapes and errors behave the same."""
from __future__ import annotations

import math

import ember
from ember import Tensor

__all__ = ["scaled_dot_product_attention", "multi_head_attention_forward"]

scaled_dot_product_attention = ember.scaled_dot_product_attention


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    y = ember.matmul(x, w.t())
    return y + b if b is not None else y


def _mha_shape_check(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                     attn_mask: Tensor | None, num_heads: int) -> bool:
    """Whether the input is batched; raises torch's AssertionError on bad ranks."""
    if query.dim() == 3:
        if key.dim() != 3 or value.dim() != 3:
            raise AssertionError(
                "[multi_head_attention] For batched (3-D) `query`, expected `key` and `value` "
                f"to be 3-D but found {key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 2:
            raise AssertionError(
                "[multi_head_attention] For batched (3-D) `query`, expected `key_padding_mask` "
                f"to be `None` or 2-D but found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise AssertionError(
                "[multi_head_attention] For batched (3-D) `query`, expected `attn_mask` to be "
                f"`None`, 2-D or 3-D but found {attn_mask.dim()}-D tensor instead")
        return True
    if query.dim() == 2:
        if key.dim() != 2 or value.dim() != 2:
            raise AssertionError(
                "[multi_head_attention] For unbatched (2-D) `query`, expected `key` and `value` "
                f"to be 2-D but found {key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 1:
            raise AssertionError(
                "[multi_head_attention] For unbatched (2-D) `query`, expected `key_padding_mask`"
                f" to be `None` or 1-D but found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None:
            if attn_mask.dim() not in (2, 3):
                raise AssertionError(
                    "[multi_head_attention] For unbatched (2-D) `query`, expected `attn_mask` to "
                    f"be `None`, 2-D or 3-D but found {attn_mask.dim()}-D tensor instead")
            expected = (num_heads, query.shape[0], key.shape[0])
            if attn_mask.dim() == 3 and tuple(attn_mask.shape) != expected:
                raise AssertionError(f"[multi_head_attention] Expected `attn_mask` shape to be "
                                     f"{expected} but got {tuple(attn_mask.shape)}")
        return False
    raise AssertionError("[multi_head_attention] query should be unbatched 2D or batched 3D "
                         f"tensor but received {query.dim()}-D query tensor")


def _canonical_mask(mask: Tensor | None, name: str, dtype: ember.dtype) -> Tensor | None:
    """A bool mask (True = masked out) becomes a float mask of 0 / -inf in ``dtype``."""
    if mask is None:
        return None
    if mask.dtype != ember.bool and not mask.is_floating_point():
        raise AssertionError(f"[multi_head_attention] only bool and floating types of {name} "
                             f"are supported, got {mask.dtype}")
    if mask.dtype == ember.bool:
        return ember.where(mask, float("-inf"), 0.0).to(dtype)
    return mask


def _pad_last(x: Tensor) -> Tensor:
    """Append one zero column on the last dim (room for bias_k / the zero attention slot)."""
    z = ember.zeros(tuple(x.shape[:-1]) + (1,), dtype=x.dtype, device=x.device)
    return ember.cat([x, z], -1)


def _in_projection_packed(q: Tensor, k: Tensor, v: Tensor, w: Tensor,
                          b: Tensor | None) -> tuple:
    E = q.shape[-1]
    if k is v:
        if q is k:  # self-attention: one matmul for q, k and v
            proj = _linear(q, w, b)
            return tuple(proj.chunk(3, -1))
        w_q, w_kv = w.split([E, 2 * E])
        b_q, b_kv = (None, None) if b is None else b.split([E, 2 * E])
        kv = _linear(k, w_kv, b_kv)
        k_, v_ = kv.chunk(2, -1)
        return _linear(q, w_q, b_q), k_, v_
    w_q, w_k, w_v = w.chunk(3)
    b_q, b_k, b_v = (None, None, None) if b is None else b.chunk(3)
    return _linear(q, w_q, b_q), _linear(k, w_k, b_k), _linear(v, w_v, b_v)


def multi_head_attention_forward(
        query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
        in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None,
        bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor,
        out_proj_bias: Tensor | None, training: bool = True,
        key_padding_mask: Tensor | None = None, need_weights: bool = True,
        attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False,
        q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
        v_proj_weight: Tensor | None = None, static_k: Tensor | None = None,
        static_v: Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False) -> tuple:
    """Multi-head attention over ``(L, N, E)`` inputs (or unbatched ``(L, E)``).

    Returns ``(attn_output (L, N, E), attn_weights)``; the weights are ``(N, L, S)`` averaged
    over heads (``(N, num_heads, L, S)`` with ``average_attn_weights=False``), or None unless
    ``need_weights``. Masks: bool (True = not allowed) or float (added to the scores);
    ``attn_mask`` is ``(L, S)`` or ``(N * num_heads, L, S)``, ``key_padding_mask`` ``(N, S)``.
    """
    is_batched = _mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    src_len = key.shape[0]
    key_padding_mask = _canonical_mask(key_padding_mask, "key_padding_mask", query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError("[multi_head_attention] Need attn_mask if specifying the is_causal "
                           "hint. You may use the Transformer module method "
                           "`generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # sdpa builds the causal mask itself
    else:
        attn_mask = _canonical_mask(attn_mask, "attn_mask", query.dtype)
        if key_padding_mask is not None:
            is_causal = False
    if embed_dim != embed_dim_to_check:
        raise AssertionError(f"[multi_head_attention] was expecting embedding dimension of "
                             f"{embed_dim_to_check}, but got {embed_dim}")
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise AssertionError(f"[multi_head_attention] embed_dim {embed_dim} not divisible by "
                             f"num_heads {num_heads}")
    if use_separate_proj_weight:
        if tuple(key.shape[:2]) != tuple(value.shape[:2]):
            raise AssertionError(f"[multi_head_attention] key's sequence and batch dims "
                                 f"{tuple(key.shape[:2])} do not match value's "
                                 f"{tuple(value.shape[:2])}")
        if q_proj_weight is None or k_proj_weight is None or v_proj_weight is None:
            raise AssertionError("[multi_head_attention] use_separate_proj_weight is True but "
                                 "q_proj_weight, k_proj_weight or v_proj_weight is None")
        b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q = _linear(query, q_proj_weight, b_q)
        k = _linear(key, k_proj_weight, b_k)
        v = _linear(value, v_proj_weight, b_v)
    else:
        if tuple(key.shape) != tuple(value.shape):
            raise AssertionError(f"[multi_head_attention] key shape {tuple(key.shape)} does not "
                                 f"match value shape {tuple(value.shape)}")
        if in_proj_weight is None:
            raise AssertionError("[multi_head_attention] use_separate_proj_weight is False but "
                                 "in_proj_weight is None")
        q, k, v = _in_projection_packed(query, key, value, in_proj_weight, in_proj_bias)

    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise RuntimeError(f"[multi_head_attention] The shape of the 2D attn_mask is "
                                   f"{tuple(attn_mask.shape)}, but should be "
                                   f"{(tgt_len, src_len)}.")
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask.dim() == 3:
            if tuple(attn_mask.shape) != (bsz * num_heads, tgt_len, src_len):
                raise RuntimeError(f"[multi_head_attention] The shape of the 3D attn_mask is "
                                   f"{tuple(attn_mask.shape)}, but should be "
                                   f"{(bsz * num_heads, tgt_len, src_len)}.")
        else:
            raise RuntimeError(f"[multi_head_attention] attn_mask's dimension {attn_mask.dim()} "
                               "is not supported")

    if bias_k is not None and bias_v is not None:
        if static_k is not None or static_v is not None:
            raise AssertionError("[multi_head_attention] bias cannot be added to static key "
                                 "or value.")
        k = ember.cat([k, bias_k.expand(1, bsz, embed_dim)])
        v = ember.cat([v, bias_v.expand(1, bsz, embed_dim)])
        if attn_mask is not None:
            attn_mask = _pad_last(attn_mask)
        if key_padding_mask is not None:
            key_padding_mask = _pad_last(key_padding_mask)
    elif bias_k is not None or bias_v is not None:
        raise AssertionError("[multi_head_attention] bias_k and bias_v must both be set or both "
                             "be None")

    q = q.reshape(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = _heads(k, static_k, "static_k", bsz, num_heads, head_dim)
    v = _heads(v, static_v, "static_v", bsz, num_heads, head_dim)
    if add_zero_attn:
        zeros = ember.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k = ember.cat([k, zeros], 1)
        v = ember.cat([v, zeros], 1)
        if attn_mask is not None:
            attn_mask = _pad_last(attn_mask)
        if key_padding_mask is not None:
            key_padding_mask = _pad_last(key_padding_mask)
    src_len = k.shape[1]

    if key_padding_mask is not None:
        if key_padding_mask.shape[0] != bsz:
            raise AssertionError(f"[multi_head_attention] Expected key_padded_mask.shape[0] to "
                                 f"be {bsz}, but got {key_padding_mask.shape[0]}")
        if key_padding_mask.shape[1] != src_len:
            raise AssertionError(f"[multi_head_attention] Expected key_padded_mask.shape[1] to "
                                 f"be {src_len}, but got {key_padding_mask.shape[1]}")
        kpm = (key_padding_mask.reshape(bsz, 1, 1, src_len)
               .expand(bsz, num_heads, 1, src_len).reshape(bsz * num_heads, 1, src_len))
        attn_mask = kpm if attn_mask is None else attn_mask + kpm

    if not training:
        dropout_p = 0.0

    if need_weights:
        q_scaled = q * math.sqrt(1.0 / float(head_dim))
        if is_causal and attn_mask is None:
            raise AssertionError("[multi_head_attention] is_causal needs attn_mask when "
                                 "need_weights=True")
        scores = ember.matmul(q_scaled, k.transpose(-2, -1))
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = ember.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            import ember.nn.functional as F
            weights = F.dropout(weights, p=dropout_p)
        out = ember.matmul(weights, v)
        out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
        out = _linear(out, out_proj_weight, out_proj_bias).reshape(tgt_len, bsz, -1)
        weights = weights.reshape(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            out = out.squeeze(1)
            weights = weights.squeeze(0)
        return out, weights

    if attn_mask is not None:
        if attn_mask.shape[0] == 1 and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
        else:
            attn_mask = attn_mask.reshape(bsz, num_heads, -1, src_len)
    q = q.reshape(bsz, num_heads, tgt_len, head_dim)
    k = k.reshape(bsz, num_heads, src_len, head_dim)
    v = v.reshape(bsz, num_heads, src_len, head_dim)
    out = ember.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
    out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
    out = _linear(out, out_proj_weight, out_proj_bias).reshape(tgt_len, bsz, -1)
    if not is_batched:
        out = out.squeeze(1)
    return out, None


def _heads(x: Tensor, static: Tensor | None, name: str, bsz: int, num_heads: int,
           head_dim: int) -> Tensor:
    """``(S, N, E)`` -> ``(N * heads, S, head_dim)``, or the given precomputed ``static_*``."""
    if static is None:
        return x.reshape(x.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if static.shape[0] != bsz * num_heads:
        raise AssertionError(f"[multi_head_attention] expecting {name}.size(0) of "
                             f"{bsz * num_heads}, but got {static.shape[0]}")
    if static.shape[2] != head_dim:
        raise AssertionError(f"[multi_head_attention] expecting {name}.size(2) of {head_dim}, "
                             f"but got {static.shape[2]}")
    return static
