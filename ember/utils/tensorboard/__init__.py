"""TensorBoard logging (``torch.utils.tensorboard``).

Needs the ``tensorboard`` package (``pip install ember[tensorboard]``): its protobufs and its
``EventFileWriter`` write the event files, exactly the machinery torch uses, so no second
writer library (tensorboardX) is needed.
"""
try:
    import tensorboard  # noqa: F401
except ImportError as e:  # pragma: no cover - optional extra
    raise ImportError("ember.utils.tensorboard needs TensorBoard: pip install tensorboard") from e

from ember.utils.tensorboard.writer import FileWriter, SummaryWriter  # noqa: F401,E402

__all__ = ["SummaryWriter", "FileWriter"]
