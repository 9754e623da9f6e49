"""The op registry and every op family. Importing this package registers all ops and binds
their functions and Tensor methods."""
from ember.ops import registry  # noqa: F401  (first: the others register into it)
from ember.ops import elementwise, reduce, movement, indexing, blas, softmax, copy  # noqa: F401
from ember.ops import linalg_solve, linalg_decomp, linalg_ops, fft_ops  # noqa: F401
from ember.ops import nn_embedding, nn_attention, nn_rnn  # noqa: F401  (nn op families)
from ember.ops import nn_conv, nn_pool, nn_norm, nn_sample  # noqa: F401
from ember.ops import nn_activation, nn_loss, linear_act, nn_fused  # noqa: F401
from ember.ops import scatter, shape_extra, blas_extra, sorting  # noqa: F401  (ops breadth)
from ember.ops import reduce_extra, special_ops, complex_ops  # noqa: F401  (ops breadth)
from ember.ops import tensor_methods  # noqa: F401  (last: aliases refer to the ops above)
from ember.ops.registry import COMPOSITES, OPS, PUBLIC_FUNCTIONS, OpDef, register  # noqa: F401
