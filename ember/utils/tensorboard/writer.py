"""``SummaryWriter``: torch.utils.tensorboard's API writing real TensorBoard event files.

The event files are written by ``tensorboard``'s own ``EventFileWriter`` (the writer
torch.utils.tensorboard uses too); ember only builds the summary protobufs.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.graph_pb2 import GraphDef
from tensorboard.compat.proto.node_def_pb2 import NodeDef
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from ember.utils.tensorboard import summary as _s

__all__ = ["SummaryWriter", "FileWriter"]


class FileWriter:
    """Writes ``Event`` protobufs to one event file in ``log_dir`` (asynchronously)."""

    def __init__(self, log_dir: str, max_queue: int = 10, flush_secs: int = 120,
                 filename_suffix: str = "") -> None:
        log_dir = str(log_dir)
        self.event_writer = EventFileWriter(log_dir, max_queue, flush_secs, filename_suffix)

    def get_logdir(self) -> str:
        return self.event_writer.get_logdir()

    def add_event(self, event: Event, step: int | None = None,
                  walltime: float | None = None) -> None:
        event.wall_time = time.time() if walltime is None else walltime
        if step is not None:
            event.step = int(step)
        self.event_writer.add_event(event)

    def add_summary(self, summary: Any, global_step: int | None = None,
                    walltime: float | None = None) -> None:
        self.add_event(Event(summary=summary), global_step, walltime)

    def add_graph(self, graph_def: GraphDef, walltime: float | None = None) -> None:
        self.add_event(Event(graph_def=graph_def.SerializeToString()), None, walltime)

    def flush(self) -> None:
        self.event_writer.flush()

    def close(self) -> None:
        self.event_writer.close()

    def reopen(self) -> None:
        self.event_writer.reopen()


class SummaryWriter:
    """Log scalars, histograms, images, text, hyperparameters and graphs for TensorBoard.

    Args:
        log_dir: output directory (default ``runs/CURRENT_DATETIME_HOSTNAME``).
        comment: suffix of the default ``log_dir``.
        purge_step: drop events at and after this step when resuming a crashed run.
        max_queue: events buffered before a write. flush_secs: flush period.
        filename_suffix: suffix of the event file names.

    Example::

        >>> writer = SummaryWriter("runs/exp1")
        >>> writer.add_scalar("loss", 0.5, global_step=1)
        >>> writer.close()
    """

    def __init__(self, log_dir: str | None = None, comment: str = "",
                 purge_step: int | None = None, max_queue: int = 10, flush_secs: int = 120,
                 filename_suffix: str = "") -> None:
        if not log_dir:
            current_time = datetime.now().strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", current_time + "_" + socket.gethostname() + comment)
        self.log_dir = str(log_dir)
        self.purge_step = purge_step
        self.max_queue = max_queue
        self.flush_secs = flush_secs
        self.filename_suffix = filename_suffix
        self.file_writer: FileWriter | None = None
        self.all_writers: dict[str, FileWriter] = {}
        self._get_file_writer()

    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:
            self.file_writer = FileWriter(self.log_dir, self.max_queue, self.flush_secs,
                                          self.filename_suffix)
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
            if self.purge_step is not None:
                # a SessionLog START at purge_step tells TensorBoard to drop later events
                from tensorboard.compat.proto.event_pb2 import SessionLog
                most_recent_step = self.purge_step
                self.file_writer.add_event(Event(step=most_recent_step, file_version="brain.Event:2"))
                self.file_writer.add_event(Event(step=most_recent_step,
                                                 session_log=SessionLog(status=SessionLog.START)))
                self.purge_step = None
        return self.file_writer

    def get_logdir(self) -> str:
        return self.log_dir

    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None,
                   walltime: float | None = None, new_style: bool = False,
                   double_precision: bool = False) -> None:
        """Log one number (a float, or a 0-d/1-element tensor)."""
        summary = _s.scalar(tag, scalar_value, new_style, double_precision)
        self._get_file_writer().add_summary(summary, global_step, walltime)

    def add_scalars(self, main_tag: str, tag_scalar_dict: dict[str, Any],
                    global_step: int | None = None, walltime: float | None = None) -> None:
        """Several scalars on one chart; each goes to its own run ``main_tag_tag``."""
        walltime = time.time() if walltime is None else walltime
        fw_logdir = self._get_file_writer().get_logdir()
        for tag, scalar_value in tag_scalar_dict.items():
            fw_tag = fw_logdir + "/" + main_tag.replace("/", "_") + "_" + tag
            if fw_tag in self.all_writers:
                fw = self.all_writers[fw_tag]
            else:
                fw = FileWriter(fw_tag, self.max_queue, self.flush_secs, self.filename_suffix)
                self.all_writers[fw_tag] = fw
            fw.add_summary(_s.scalar(main_tag, scalar_value), global_step, walltime)

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None,
                      bins: Any = "tensorflow", walltime: float | None = None,
                      max_bins: int | None = None) -> None:
        self._get_file_writer().add_summary(_s.histogram(tag, values, bins, max_bins),
                                            global_step, walltime)

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None,
                  walltime: float | None = None, dataformats: str = "CHW") -> None:
        """Log an image (``CHW`` by default; floats in [0, 1], uint8 in [0, 255])."""
        self._get_file_writer().add_summary(_s.image(tag, img_tensor, dataformats=dataformats),
                                            global_step, walltime)

    def add_images(self, tag: str, img_tensor: Any, global_step: int | None = None,
                   walltime: float | None = None, dataformats: str = "NCHW") -> None:
        """Log a batch of images tiled into one grid."""
        import numpy as np
        arr = _s.make_np(img_tensor)
        n_index = dataformats.upper().find("N")
        arr = np.moveaxis(arr, n_index, 0)
        rest = dataformats.upper().replace("N", "")
        import ember
        from ember.vision.utils import make_grid
        tiles = [ember.from_numpy(np.ascontiguousarray(_s._to_hwc(a, rest).transpose(2, 0, 1)))
                 for a in arr]
        grid = make_grid(tiles, nrow=int(np.ceil(np.sqrt(len(tiles)))), padding=0)
        self.add_image(tag, grid, global_step, walltime, dataformats="CHW")

    def add_text(self, tag: str, text_string: str, global_step: int | None = None,
                 walltime: float | None = None) -> None:
        self._get_file_writer().add_summary(_s.text(tag, text_string), global_step, walltime)

    def add_hparams(self, hparam_dict: dict, metric_dict: dict,
                    hparam_domain_discrete: dict | None = None, run_name: str | None = None,
                    global_step: int | None = None) -> None:
        """Log one run's hyperparameters and final metrics for the HParams dashboard."""
        if not isinstance(hparam_dict, dict) or not isinstance(metric_dict, dict):
            raise TypeError("hparam_dict and metric_dict should be dictionary.")
        exp, ssi, sei = _s.hparams(hparam_dict, metric_dict, hparam_domain_discrete)
        if not run_name:
            run_name = str(time.time())
        logdir = os.path.join(self._get_file_writer().get_logdir(), run_name)
        with SummaryWriter(log_dir=logdir) as w_hp:
            w_hp.file_writer.add_summary(exp, global_step)
            w_hp.file_writer.add_summary(ssi, global_step)
            w_hp.file_writer.add_summary(sei, global_step)
            for k, v in metric_dict.items():
                w_hp.add_scalar(k, v, global_step)

    def add_graph(self, model: Any, input_to_model: Any = None, verbose: bool = False,
                  use_strict_trace: bool = True) -> None:
        """Log the module graph of one forward pass.

        ember has no TorchScript trace, so the graph is recorded at module granularity: one
        node per leaf module call (op = class name, shapes as attributes), with an edge
        wherever a module consumes a tensor another module produced.
        """
        import ember
        from tensorboard.compat.proto.attr_value_pb2 import AttrValue
        names = {m: n for n, m in model.named_modules()}
        produced: dict[int, str] = {}
        nodes: list[NodeDef] = []
        keep_alive: list[Any] = []

        def flat(x: Any) -> list:
            if isinstance(x, ember.Tensor):
                return [x]
            if isinstance(x, (list, tuple)):
                return [t for v in x for t in flat(v)]
            if isinstance(x, dict):
                return [t for v in x.values() for t in flat(v)]
            return []

        inputs = input_to_model if isinstance(input_to_model, (list, tuple)) else \
            (input_to_model,)
        for i, t in enumerate(flat(inputs)):
            name = f"input/input.{i}"
            produced[id(t)] = name
            nodes.append(NodeDef(name=name, op="IO Node", attr={
                "_output_shapes": AttrValue(s=str(list(t.shape)).encode())}))

        def hook(mod: Any, args: Any, out: Any) -> None:
            if any(True for _ in mod.children()):
                return  # containers: their leaves carry the data flow
            base = names.get(mod, type(mod).__name__) or type(mod).__name__
            name = f"{type(model).__name__}/{base}"
            ins = [produced[id(t)] for t in flat(args) if id(t) in produced]
            outs = flat(out)
            keep_alive.extend(outs)  # ids must stay unique while the graph is recorded
            for t in outs:
                produced[id(t)] = name
            shape = str([list(t.shape) for t in outs]).encode()
            nodes.append(NodeDef(name=name, op=type(mod).__name__, input=ins, attr={
                "_output_shapes": AttrValue(s=shape)}))

        handles = [m.register_forward_hook(hook) for m in model.modules()]
        try:
            with ember.no_grad():
                out = model(*inputs)
        finally:
            for h in handles:
                h.remove()
        for i, t in enumerate(flat(out)):
            if id(t) in produced:
                nodes.append(NodeDef(name=f"output/output.{i}", op="IO Node",
                                     input=[produced[id(t)]]))
        if verbose:
            for n in nodes:
                print(n.name, n.op, list(n.input))
        self._get_file_writer().add_graph(GraphDef(node=nodes))

    def flush(self) -> None:
        if self.all_writers is None:
            return
        for writer in self.all_writers.values():
            writer.flush()

    def close(self) -> None:
        if self.all_writers is None:
            return
        for writer in self.all_writers.values():
            writer.flush()
            writer.close()
        self.file_writer = self.all_writers = None

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.close()
