"""Variable-length sequences for recurrent layers (torch.nn.utils.rnn).

A :class:`PackedSequence` stores the valid timesteps of a batch of sequences back to back:
``data`` holds the ``batch_sizes[0]`` rows of timestep 0, then the ``batch_sizes[1]`` rows of
timestep 1, and so on, with sequences sorted by decreasing length. Packing and unpacking are
single gather ops on the padded tensor, so both are differentiable.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Iterable, Sequence

import numpy as np

import ember
from ember import Tensor

__all__ = ["PackedSequence", "invert_permutation", "pack_padded_sequence",
           "pad_packed_sequence", "pad_sequence", "unpad_sequence", "pack_sequence",
           "unpack_sequence"]

_PackedSequenceBase = namedtuple("PackedSequence",
                                 ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])


class PackedSequence(_PackedSequenceBase):
    """Holds the data and the per-timestep batch sizes of a packed batch of sequences.

    Build one with :func:`pack_padded_sequence` or :func:`pack_sequence`, never directly.

    Attributes:
        data: ``(sum(lengths), *)`` the packed rows, timestep by timestep.
        batch_sizes: int64 CPU tensor, the number of sequences still running at each step.
        sorted_indices: how the batch was sorted by decreasing length (None if given sorted).
        unsorted_indices: the inverse permutation, to restore the original order.
    """

    def __new__(cls, data: Tensor, batch_sizes: Tensor | None = None,
                sorted_indices: Tensor | None = None,
                unsorted_indices: Tensor | None = None) -> "PackedSequence":
        if unsorted_indices is None:
            unsorted_indices = invert_permutation(sorted_indices)
        if batch_sizes is not None:
            if batch_sizes.device.type != "cpu":
                raise ValueError(
                    "[PackedSequence] batch_sizes should always be on CPU. Instances of "
                    "PackedSequence should never be created manually. They should be "
                    "instantiated by functions like pack_sequence and pack_padded_sequences in "
                    "nn.utils.rnn.")
            return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)
        # torch also accepts PackedSequence((data, batch_sizes)) built from a tuple
        if not (isinstance(data, (list, tuple)) and len(data) == 2):
            raise TypeError("[PackedSequence] expected (data, batch_sizes)")
        return super().__new__(cls, data[0], data[1], sorted_indices, unsorted_indices)

    def _with_data(self, data: Tensor) -> "PackedSequence":
        return type(self)(data, self.batch_sizes, self.sorted_indices, self.unsorted_indices)

    def to(self, *args: Any, **kwargs: Any) -> "PackedSequence":
        """Move/cast ``data`` (and the index tensors to its device); batch_sizes stay on CPU."""
        data = self.data.to(*args, **kwargs)
        if data is self.data:
            return self
        dev = data.device
        sorted_i = self.sorted_indices.to(dev) if self.sorted_indices is not None else None
        unsorted_i = (self.unsorted_indices.to(dev) if self.unsorted_indices is not None
                      else None)
        return type(self)(data, self.batch_sizes, sorted_i, unsorted_i)

    def cuda(self, *args: Any, **kwargs: Any) -> "PackedSequence":
        return self.to("cuda" if not args else args[0], **kwargs)

    def cpu(self, *args: Any, **kwargs: Any) -> "PackedSequence":
        return self.to("cpu")

    def double(self) -> "PackedSequence":
        return self.to(dtype=ember.float64)

    def float(self) -> "PackedSequence":
        return self.to(dtype=ember.float32)

    def half(self) -> "PackedSequence":
        return self.to(dtype=ember.float16)

    def bfloat16(self) -> "PackedSequence":
        return self.to(dtype=ember.bfloat16)

    def long(self) -> "PackedSequence":
        return self.to(dtype=ember.int64)

    def int(self) -> "PackedSequence":
        return self.to(dtype=ember.int32)

    def short(self) -> "PackedSequence":
        return self.to(dtype=ember.int16)

    def char(self) -> "PackedSequence":
        return self.to(dtype=ember.int8)

    def byte(self) -> "PackedSequence":
        return self.to(dtype=ember.uint8)

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda

    def is_pinned(self) -> bool:
        return False


def invert_permutation(permutation: Tensor | None) -> Tensor | None:
    """The inverse of a permutation tensor (None stays None)."""
    if permutation is None:
        return None
    perm = permutation._host().astype(np.int64)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.shape[0], dtype=np.int64)
    return ember.tensor(inv, device=permutation.device)


def _lengths_array(lengths: Any) -> np.ndarray:
    if isinstance(lengths, Tensor):
        if lengths.dim() != 1:
            raise RuntimeError(f"[pack_padded_sequence] 'lengths' must be a 1D tensor, got shape "
                               f"{tuple(lengths.shape)}")
        return lengths._host().astype(np.int64)
    return np.asarray(list(lengths), dtype=np.int64).reshape(-1)


def _batch_sizes(lengths: np.ndarray) -> np.ndarray:
    """Number of sequences longer than t, for every t (lengths sorted decreasing)."""
    if lengths.size == 0:
        return np.zeros(0, np.int64)
    steps = np.arange(int(lengths[0]))
    return (lengths[None, :] > steps[:, None]).sum(1).astype(np.int64)


def pack_padded_sequence(input: Tensor, lengths: Tensor | Sequence[int], batch_first: bool = False,
                         enforce_sorted: bool = True) -> PackedSequence:
    """Pack a padded batch of variable-length sequences.

    Args:
        input: ``(T, B, *)`` (or ``(B, T, *)`` with ``batch_first``), padded.
        lengths: length of each sequence (a list or a 1-D CPU int64 tensor).
        enforce_sorted: require ``lengths`` sorted in decreasing order; with False the batch
            is sorted here and ``unsorted_indices`` restores it.

    Returns:
        a :class:`PackedSequence`.
    """
    lens = _lengths_array(lengths)
    if isinstance(lengths, Tensor) and lengths.device.type != "cpu":
        raise RuntimeError("[pack_padded_sequence] 'lengths' argument should be a 1D CPU int64 "
                           f"tensor, but got 1D {lengths.device} tensor")
    bdim = 0 if batch_first else 1
    if input.dim() < 2:
        raise RuntimeError(f"[pack_padded_sequence] input must have at least 2 dims (T, B, *), "
                           f"got shape {tuple(input.shape)}")
    if lens.shape[0] != input.shape[bdim]:
        raise RuntimeError(f"[pack_padded_sequence] Expected `len(lengths)` to be equal to "
                           f"batch_size, but got {lens.shape[0]} (batch_size={input.shape[bdim]})")
    if enforce_sorted:
        if lens.size > 1 and np.any(lens[1:] > lens[:-1]):
            raise RuntimeError(
                "[pack_padded_sequence] `lengths` array must be sorted in decreasing order when "
                "`enforce_sorted` is True. You can pass `enforce_sorted=False` to "
                "pack_padded_sequence and/or pack_sequence to sidestep this requirement if you "
                f"do not need ONNX exportability. Got lengths {lens.tolist()}")
        sorted_indices = None
        order = np.arange(lens.shape[0])
    else:
        order = np.argsort(-lens, kind="stable")
        sorted_indices = ember.tensor(order, device=input.device)
        lens = lens[order]
    if lens.size and lens[-1] <= 0:
        raise RuntimeError("[pack_padded_sequence] Length of all samples has to be greater than "
                           "0, but found an element in 'lengths' that is <= 0")
    T = input.shape[1 - bdim]
    if lens.size and lens[0] > T:
        raise RuntimeError(f"[pack_padded_sequence] a length ({int(lens[0])}) exceeds the padded "
                           f"sequence length {T}")
    bs = _batch_sizes(lens)
    # Row of (t, b) in the padded tensor flattened to (T * B) or (B * T): one gather packs it.
    B = input.shape[bdim]
    rows = []
    for t, b in enumerate(bs):
        cols = order[:b]
        rows.append(cols * T + t if batch_first else t * B + cols)
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    flat = input.reshape(T * B, *input.shape[2:])
    data = flat[ember.tensor(idx, device=input.device)]
    return PackedSequence(data, ember.tensor(bs, device="cpu"), sorted_indices, None)


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False,
                        padding_value: float = 0.0, total_length: int | None = None) -> tuple:
    """Inverse of :func:`pack_padded_sequence`: returns ``(padded, lengths)`` in the original
    batch order; ``total_length`` pads the time dimension to at least that length."""
    data, batch_sizes = sequence.data, sequence.batch_sizes
    bs = batch_sizes._host().astype(np.int64)
    max_len = int(bs.shape[0])
    if total_length is not None:
        if total_length < max_len:
            raise ValueError(f"[pad_packed_sequence] Expected total_length to be at least the "
                             f"length of the longest sequence in input, but got total_length="
                             f"{total_length} and max sequence length being {max_len}")
        max_len = total_length
    B = int(bs[0]) if bs.size else 0
    n = data.shape[0]
    # Every (t, b) slot reads a packed row, or the extra padding row at index n.
    idx = np.full((max_len, B), n, dtype=np.int64)
    start = 0
    for t, b in enumerate(bs):
        idx[t, :b] = np.arange(start, start + b)
        start += b
    lengths = (idx[:len(bs)] < n).sum(0) if bs.size else np.zeros(B, np.int64)
    unsorted = sequence.unsorted_indices
    if unsorted is not None:
        perm = unsorted._host().astype(np.int64)
        idx = idx[:, perm]
        lengths = lengths[perm]
    if batch_first:
        idx = idx.T
    pad = ember.full((1,) + tuple(data.shape[1:]), padding_value, dtype=data.dtype,
                     device=data.device)
    padded = ember.cat([data, pad], 0)[ember.tensor(np.ascontiguousarray(idx),
                                                    device=data.device)]
    return padded, ember.tensor(lengths.astype(np.int64), device="cpu")


def pad_sequence(sequences: Tensor | Iterable[Tensor], batch_first: bool = False,
                 padding_value: float = 0.0, padding_side: str = "right") -> Tensor:
    """Stack variable-length tensors ``(L_i, *)`` into ``(T, B, *)`` (``(B, T, *)`` with
    ``batch_first``), filling with ``padding_value`` on the ``padding_side``."""
    if padding_side not in ("left", "right"):
        raise RuntimeError(f"[pad_sequence] Expected padding_side to be one of left or right, but "
                           f"got {padding_side}.")
    if isinstance(sequences, Tensor):
        sequences = sequences.unbind(0)
    seqs = list(sequences)
    if not seqs:
        raise RuntimeError("[pad_sequence] received an empty list of sequences")
    trailing = tuple(seqs[0].shape[1:])
    for i, s in enumerate(seqs):
        if tuple(s.shape[1:]) != trailing:
            raise RuntimeError(f"[pad_sequence] The size of tensor {i} {tuple(s.shape)} must "
                               f"match the trailing dims {trailing} of tensor 0")
    T = max(s.shape[0] for s in seqs)
    out = []
    for s in seqs:
        missing = T - s.shape[0]
        if missing:
            fill = ember.full((missing,) + trailing, padding_value, dtype=s.dtype,
                              device=s.device)
            s = ember.cat([s, fill] if padding_side == "right" else [fill, s], 0)
        out.append(s)
    return ember.stack(out, 0 if batch_first else 1)


def unpad_sequence(padded_sequences: Tensor, lengths: Tensor | Sequence[int],
                   batch_first: bool = False) -> list:
    """Split a padded batch back into a list of ``(L_i, *)`` tensors."""
    if not batch_first:
        padded_sequences = padded_sequences.transpose(0, 1)
    lens = _lengths_array(lengths)
    return [seq[:int(n)] for seq, n in zip(padded_sequences.unbind(0), lens)]


def pack_sequence(sequences: Sequence[Tensor], enforce_sorted: bool = True) -> PackedSequence:
    """Pack a list of variable-length tensors ``(L_i, *)`` (sorted by decreasing length
    unless ``enforce_sorted=False``)."""
    lengths = [s.shape[0] for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths,
                                enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: PackedSequence) -> list:
    """Inverse of :func:`pack_sequence`: the list of ``(L_i, *)`` tensors in original order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
