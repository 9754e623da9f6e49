"""Summary protobufs for TensorBoard (scalars, histograms, images, text, hparams).

Built with the protobuf classes that ship in the ``tensorboard`` package, the same ones
torch.utils.tensorboard uses, so TensorBoard and its EventAccumulator read them natively.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from tensorboard.compat.proto.histogram_pb2 import HistogramProto
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

__all__ = ["scalar", "histogram", "image", "text", "hparams", "make_np"]


def make_np(x: Any) -> np.ndarray:
    """A NumPy array from an ember tensor, array or Python number (detached, on the host)."""
    import ember
    if isinstance(x, ember.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if np.isscalar(x):
        return np.array([x])
    raise NotImplementedError(f"Got {type(x)}, but numpy array or torch tensor are expected.")


def scalar(name: str, value: Any, new_style: bool = False,
           double_precision: bool = False) -> Summary:
    """A scalar summary: ``simple_value``, or with ``new_style`` a tensor summary of the
    scalars plugin (float64 when ``double_precision``)."""
    arr = make_np(value).squeeze()
    if arr.ndim != 0:
        raise ValueError(f"scalar should be 0D, got shape {arr.shape}")
    if not new_style:
        return Summary(value=[Summary.Value(tag=name, simple_value=float(arr))])
    if double_precision:
        tensor = TensorProto(double_val=[float(arr)], dtype="DT_DOUBLE")
    else:
        tensor = TensorProto(float_val=[float(arr)], dtype="DT_FLOAT")
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    return Summary(value=[Summary.Value(tag=name, tensor=tensor, metadata=smd)])


def _default_bins() -> np.ndarray:
    # TensorFlow's exponential buckets: +-1e-12 * 1.1^k up to 1e20, and 0
    v = 1e-12
    buckets = []
    while v < 1e20:
        buckets.append(v)
        v *= 1.1
    neg = [-b for b in buckets[::-1]]
    return np.array(neg + [0.0] + buckets)


def histogram(name: str, values: Any, bins: Any = "tensorflow",
              max_bins: int | None = None) -> Summary:
    values = make_np(values).astype(np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("The input has no element.")
    if isinstance(bins, str) and bins == "tensorflow":
        bins = _default_bins()
    counts, limits = np.histogram(values, bins=bins)
    num_bins = len(counts)
    if max_bins is not None and num_bins > max_bins:
        subsampling = num_bins // max_bins
        subsampling_remainder = num_bins % subsampling
        if subsampling_remainder != 0:
            counts = np.pad(counts, (0, subsampling - subsampling_remainder), "constant")
        counts = counts.reshape(-1, subsampling).sum(axis=-1)
        new_limits = np.empty((counts.size + 1,), limits.dtype)
        new_limits[:-1] = limits[:-1:subsampling]
        new_limits[-1] = limits[-1]
        limits = new_limits
    # keep only the span of non-empty buckets (plus the empty one before it)
    cum_counts = np.cumsum(np.greater(counts, 0))
    start, end = np.searchsorted(cum_counts, [0, cum_counts[-1] - 1], side="right")
    start, end = int(start), int(end) + 1
    counts = counts[start - 1:end] if start > 0 else np.concatenate([[0], counts[:end]])
    limits = limits[start:end + 1]
    hist = HistogramProto(min=values.min(), max=values.max(), num=len(values),
                          sum=values.sum(), sum_squares=values.dot(values),
                          bucket_limit=limits.tolist(), bucket=counts.tolist())
    return Summary(value=[Summary.Value(tag=name, histo=hist)])


def _to_hwc(tensor: np.ndarray, dataformats: str) -> np.ndarray:
    dataformats = dataformats.upper()
    if len(set(dataformats)) != len(dataformats):
        raise ValueError(f"an input dataformat should not contain duplicated letters: "
                         f"{dataformats}")
    if tensor.ndim != len(dataformats):
        raise ValueError(f"size of input tensor and input format are different. "
                         f"tensor shape: {tensor.shape}, input_format: {dataformats}")
    if dataformats == "HW":
        return np.stack([tensor, tensor, tensor], 2)
    index = [dataformats.find(c) for c in "HWC"]
    hwc = tensor.transpose(index)
    if hwc.shape[2] == 1:
        hwc = np.concatenate([hwc, hwc, hwc], 2)
    return hwc


def _encode_png(hwc: np.ndarray) -> Summary.Image:
    from PIL import Image
    height, width, channel = hwc.shape
    im = Image.fromarray(hwc)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return Summary.Image(height=height, width=width, colorspace=channel,
                         encoded_image_string=buf.getvalue())


def image(tag: str, tensor: Any, rescale: float = 1, dataformats: str = "CHW") -> Summary:
    """A PNG image summary; floats in [0, 1] are scaled to [0, 255]."""
    arr = make_np(tensor)
    arr = _to_hwc(arr, dataformats)
    scale_factor = 1 if arr.dtype == np.uint8 else 255
    arr = (arr.astype(np.float32) * scale_factor).clip(0, 255).astype(np.uint8)
    if rescale != 1:
        from PIL import Image
        h, w = arr.shape[:2]
        arr = np.asarray(Image.fromarray(arr).resize((int(w * rescale), int(h * rescale)),
                                                     Image.LANCZOS))
    return Summary(value=[Summary.Value(tag=tag, image=_encode_png(arr))])


def text(tag: str, text: str) -> Summary:
    plugin_data = SummaryMetadata.PluginData(plugin_name="text", content=b"")
    smd = SummaryMetadata(plugin_data=plugin_data)
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode(encoding="utf_8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag + "/text_summary", metadata=smd, tensor=tensor)])


def hparams(hparam_dict: dict, metric_dict: dict,
            hparam_domain_discrete: dict | None = None) -> tuple[Summary, Summary, Summary]:
    """The experiment, session-start and session-end summaries of the HParams plugin."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams.api_pb2 import (DataType, Experiment, HParamInfo,
                                                     MetricInfo, MetricName, Status)
    from tensorboard.plugins.hparams.metadata import (EXPERIMENT_TAG, PLUGIN_DATA_VERSION,
                                                      PLUGIN_NAME, SESSION_END_INFO_TAG,
                                                      SESSION_START_INFO_TAG)
    from tensorboard.plugins.hparams.plugin_data_pb2 import (HParamsPluginData,
                                                             SessionEndInfo, SessionStartInfo)
    import ember
    if not isinstance(hparam_dict, dict) or not isinstance(metric_dict, dict):
        raise TypeError("hparam_dict and metric_dict should be dictionary.")
    hparam_domain_discrete = hparam_domain_discrete or {}
    for k, v in hparam_domain_discrete.items():
        if k not in hparam_dict or not isinstance(v, list) or \
                not all(isinstance(d, type(hparam_dict[k])) for d in v):
            raise TypeError(f"parameter: hparam_domain_discrete[{k}] should be a list of same "
                            f"type as hparam_dict[{k}].")
    hps = []
    ssi = SessionStartInfo()
    for k, v in hparam_dict.items():
        if v is None:
            continue
        if isinstance(v, ember.Tensor):
            v = float(make_np(v).reshape(-1)[0])
        if isinstance(v, bool):
            ssi.hparams[k].bool_value = v
            dtype, values = "DATA_TYPE_BOOL", [struct_pb2.Value(bool_value=d)
                                               for d in hparam_domain_discrete.get(k, [])]
        elif isinstance(v, (int, float)):
            ssi.hparams[k].number_value = v
            dtype, values = "DATA_TYPE_FLOAT64", [struct_pb2.Value(number_value=d)
                                                  for d in hparam_domain_discrete.get(k, [])]
        elif isinstance(v, str):
            ssi.hparams[k].string_value = v
            dtype, values = "DATA_TYPE_STRING", [struct_pb2.Value(string_value=d)
                                                 for d in hparam_domain_discrete.get(k, [])]
        else:
            raise ValueError("value should be one of int, float, str, bool, or torch.Tensor")
        domain = struct_pb2.ListValue(values=values) if k in hparam_domain_discrete else None
        hps.append(HParamInfo(name=k, type=DataType.Value(dtype), domain_discrete=domain))

    def wrap(tag: str, content: Any) -> Summary:
        smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content.SerializeToString()))
        return Summary(value=[Summary.Value(tag=tag, metadata=smd)])

    start = wrap(SESSION_START_INFO_TAG,
                 HParamsPluginData(session_start_info=ssi, version=PLUGIN_DATA_VERSION))
    mts = [MetricInfo(name=MetricName(tag=k)) for k in metric_dict.keys()]
    exp = wrap(EXPERIMENT_TAG, HParamsPluginData(
        experiment=Experiment(hparam_infos=hps, metric_infos=mts), version=PLUGIN_DATA_VERSION))
    end = wrap(SESSION_END_INFO_TAG, HParamsPluginData(
        session_end_info=SessionEndInfo(status=Status.Value("STATUS_SUCCESS")),
        version=PLUGIN_DATA_VERSION))
    return exp, start, end
