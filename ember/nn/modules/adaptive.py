"""``AdaptiveLogSoftmaxWithLoss``: the efficient softmax approximation of Grave et al. (2016)
for large vocabularies. Frequent classes live in a head softmax; rare ones in tail clusters
reached through one head entry each, with down-projected (cheaper) tail inputs."""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Sequence

import ember
from ember.nn.modules.container import ModuleList, Sequential
from ember.nn.modules.linear import Linear
from ember.nn.modules.module import Module
from ember.tensor import Tensor

__all__ = ["AdaptiveLogSoftmaxWithLoss"]

_ASMoutput = namedtuple("_ASMoutput", ["output", "loss"])


class AdaptiveLogSoftmaxWithLoss(Module):
    """Adaptive softmax: log-probabilities of the targets and the mean negative
    log-likelihood, without computing the full softmax.

    Args:
        in_features: number of features of the input.
        n_classes: number of classes.
        cutoffs: increasing class-index cutoffs splitting the classes into the head
            (``[0, cutoffs[0])``) and tail clusters.
        div_value: each tail cluster ``i`` projects the input to
            ``in_features // div_value ** (i + 1)`` features. Default: 4.0.
        head_bias: give the head a bias. Default: ``False``.

    Shape:
        - input: ``(N, in_features)`` or ``(in_features)``.
        - target: ``(N)`` or ``()`` class indices in ``[0, n_classes)``.
        - output1 (``output``): ``(N)`` or ``()`` target log-probabilities.
        - output2 (``loss``): scalar mean negative log-likelihood.

    Example::

        >>> asm = nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 10])
        >>> out, loss = asm(ember.randn(4, 16), ember.tensor([0, 7, 12, 19]))
    """

    in_features: int
    n_classes: int
    cutoffs: list
    div_value: float
    head_bias: bool

    def __init__(self, in_features: int, n_classes: int, cutoffs: Sequence[int],
                 div_value: float = 4.0, head_bias: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        cutoffs = list(cutoffs)
        if len(cutoffs) == 0:
            raise ValueError("cutoffs should be a sequence of length larger than 0")
        if (cutoffs != sorted(cutoffs) or min(cutoffs) <= 0 or max(cutoffs) > (n_classes - 1)
                or len(set(cutoffs)) != len(cutoffs)
                or any(int(c) != c for c in cutoffs)):
            raise ValueError("cutoffs should be a sequence of unique, positive integers sorted "
                             "in an increasing order, where each value is between 1 and "
                             "n_classes-1")
        self.in_features = in_features
        self.n_classes = n_classes
        self.cutoffs = cutoffs + [n_classes]
        self.div_value = div_value
        self.head_bias = head_bias
        self.shortlist_size = self.cutoffs[0]
        self.n_clusters = len(self.cutoffs) - 1
        self.head_size = self.shortlist_size + self.n_clusters
        self.head = Linear(self.in_features, self.head_size, bias=self.head_bias,
                           device=device, dtype=dtype)
        self.tail = ModuleList()
        for i in range(self.n_clusters):
            hsz = int(self.in_features // (self.div_value ** (i + 1)))
            osz = self.cutoffs[i + 1] - self.cutoffs[i]
            projection = Sequential(
                Linear(self.in_features, hsz, bias=False, device=device, dtype=dtype),
                Linear(hsz, osz, bias=False, device=device, dtype=dtype))
            self.tail.append(projection)

    def reset_parameters(self) -> None:
        self.head.reset_parameters()
        for i2h, h2o in self.tail:  # type: ignore[misc]
            i2h.reset_parameters()
            h2o.reset_parameters()

    def forward(self, input_: Tensor, target_: Tensor) -> _ASMoutput:
        targ_dim = target_.dim()
        if targ_dim == 1:
            if input_.size(0) != target_.size(0):
                raise self._layer_error(RuntimeError, "Input and target should have the same "
                                                      "size in the batch dimension (input "
                                                      f"{tuple(input_.shape)}, target "
                                                      f"{tuple(target_.shape)}).")
            if input_.dim() != 2:
                raise self._layer_error(RuntimeError, "1D target tensor expects 2D input "
                                                      "tensors, but found inputs with size "
                                                      f"{tuple(input_.shape)}")
        elif targ_dim == 0:
            if input_.dim() != 1:
                raise self._layer_error(RuntimeError, "0D target tensor expects 1D input "
                                                      "tensors, but found inputs with size "
                                                      f"{tuple(input_.shape)}")
        else:
            raise self._layer_error(RuntimeError, "0D or 1D target tensor expected, "
                                                  "multi-target not supported")
        is_batched = targ_dim > 0
        input = input_ if is_batched else input_.unsqueeze(0)
        target = (target_ if is_batched else target_.unsqueeze(0)).long()
        batch_size = target.size(0)
        if batch_size and (int(target.min()) < 0 or int(target.max()) >= self.n_classes):
            raise self._layer_error(
                RuntimeError, f"Target values should be in [0, {self.n_classes - 1}], but "
                              f"values in range [{int(target.min())}, {int(target.max())}] "
                              "were found. ")
        rows = ember.arange(batch_size, device=input.device)
        output = input.new_zeros(batch_size)
        # head column per row: the class itself (shortlist) or its cluster's entry
        gather_inds = target.clone()
        for i in range(self.n_clusters):
            low, high = self.cutoffs[i], self.cutoffs[i + 1]
            mask = (target >= low) & (target < high)
            idx = rows[mask]
            if idx.numel() == 0:
                continue
            relative_target = target[idx] - low
            cluster_logprob = self.tail[i](input[idx]).log_softmax(1)
            local = cluster_logprob[ember.arange(idx.numel(), device=input.device),
                                    relative_target]
            # scatter the cluster rows' log-probabilities into the per-row output
            onehot = (idx.unsqueeze(1) == rows).to(local.dtype)
            output = output + local.matmul(onehot)
            gather_inds = ember.where(mask, ember.full_like(gather_inds,
                                                            self.shortlist_size + i),
                                      gather_inds)
        head_logprob = self.head(input).log_softmax(1)
        output = output + head_logprob[rows, gather_inds]
        loss = (-output).mean()
        if not is_batched:
            output = output.squeeze(0)
        return _ASMoutput(output, loss)

    def _get_full_log_prob(self, input: Tensor, head_output: Tensor) -> Tensor:
        head_logprob = head_output.log_softmax(1)
        parts = [head_logprob[:, :self.shortlist_size]]
        for i in range(self.n_clusters):
            cluster_logprob = self.tail[i](input).log_softmax(1)
            parts.append(cluster_logprob +
                         head_logprob[:, self.shortlist_size + i].unsqueeze(1))
        return ember.cat(parts, 1)

    def log_prob(self, input: Tensor) -> Tensor:
        """Log-probabilities of all classes: ``(N, n_classes)`` (or ``(n_classes)``)."""
        is_batched = input.dim() > 1
        x = input if is_batched else input.unsqueeze(0)
        out = self._get_full_log_prob(x, self.head(x))
        return out if is_batched else out.squeeze(0)

    def predict(self, input: Tensor) -> Tensor:
        """The most likely class per row (cheap when the head's argmax is a shortlist class)."""
        is_batched = input.dim() > 1
        x = input if is_batched else input.unsqueeze(0)
        head_output = self.head(x)
        output = head_output.argmax(1)
        not_in_shortlist = output >= self.shortlist_size
        if bool(not_in_shortlist.any()):
            full = self._get_full_log_prob(x, head_output).argmax(1)
            output = ember.where(not_in_shortlist, full, output)
        return output if is_batched else output.squeeze(0)
