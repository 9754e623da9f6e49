"""Weights enums and the checkpoint cache (``torchvision.models._api`` and ``torch.hub``).

``load_state_dict_from_url`` looks in the cache directory first
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``, the same place
torch uses, so files torch already downloaded are found) and downloads only when missing.
Offline, a missing file raises a RuntimeError that names the file to place there.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from enum import Enum

from typing import Any, Callable

import ember

__all__ = ["Weights", "WeightsEnum", "get_dir", "load_state_dict_from_url", "get_weight",
           "get_model_weights", "get_model", "list_models", "register_model"]

_HASH_RE = re.compile(r"-([a-f0-9]*)\.")


def get_dir() -> str:
    """The hub directory: ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``)."""
    torch_home = os.path.expanduser(os.getenv(
        "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))
    return os.path.join(torch_home, "hub")


def _download(url: str, dst: str, hash_prefix: str | None, progress: bool) -> None:
    tmp = dst + ".partial"
    sha256 = hashlib.sha256()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "ember.vision"})
        with urllib.request.urlopen(req) as resp, open(tmp, "wb") as f:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                sha256.update(chunk)
        if hash_prefix is not None and not sha256.hexdigest().startswith(hash_prefix):
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got '
                               f'"{sha256.hexdigest()}")')
        shutil.move(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_state_dict_from_url(url: str, model_dir: str | None = None, map_location: Any = None,
                             progress: bool = True, check_hash: bool = False,
                             file_name: str | None = None,
                             weights_only: bool = True) -> dict[str, Any]:
    """Load a checkpoint from the cache, downloading it first if it is not there.

    Raises:
        RuntimeError: the file is not cached and cannot be downloaded (offline).
    """
    if model_dir is None:
        model_dir = os.path.join(get_dir(), "checkpoints")
    os.makedirs(model_dir, exist_ok=True)
    filename = file_name or os.path.basename(urllib.parse.urlparse(url).path)
    cached_file = os.path.join(model_dir, filename)
    if not os.path.exists(cached_file):
        match = _HASH_RE.search(filename)
        hash_prefix = match.group(1) if (check_hash and match) else None
        try:
            _download(url, cached_file, hash_prefix, progress)
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(
                f"[load_state_dict_from_url] {filename} is not in the cache ({model_dir}) and "
                f"downloading {url} failed: {e}\n  hint: copy the file to {cached_file}, or "
                f"build the model with weights=None and load a state_dict yourself") from e
    return ember.load(cached_file, map_location=map_location, weights_only=weights_only)


@dataclass
class Weights:
    """One set of pretrained weights: where they live, how to preprocess, what they scored."""

    url: str
    transforms: Callable
    meta: dict[str, Any] = field(default_factory=dict)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Weights):
            return NotImplemented
        return self.url == other.url and self.meta == other.meta

    def __hash__(self) -> int:
        return hash(self.url)


class WeightsEnum(Enum):
    """Enum of the weights of one model; ``Model_Weights.DEFAULT`` is the recommended one."""

    @classmethod
    def verify(cls, obj: Any) -> Any:
        if obj is not None:
            if type(obj) is str:
                obj = cls[obj.replace(cls.__name__ + ".", "")]
            elif not isinstance(obj, cls):
                raise TypeError(f"Invalid Weight class provided; expected {cls.__name__} but "
                                f"received {obj.__class__.__name__}.")
        return obj

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return load_state_dict_from_url(self.url, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}.{self._name_}"

    @property
    def url(self) -> str:
        return self.value.url

    @property
    def transforms(self) -> Callable:
        return self.value.transforms

    @property
    def meta(self) -> dict[str, Any]:
        return self.value.meta


BUILTIN_MODELS: dict[str, Callable] = {}


_MODEL_WEIGHTS: dict[Callable, type] = {}


def _handle_legacy_pretrained(fn: Callable, weights_enum: type) -> Callable:
    """Accept torchvision's deprecated ``pretrained=True/False`` (maps to IMAGENET1K_V1)."""
    @functools.wraps(fn)
    def builder(*args: Any, **kwargs: Any) -> Any:
        if args:
            if len(args) > 1 or "pretrained" in kwargs:
                raise TypeError(f"{fn.__name__}() takes at most 1 positional argument "
                                f"(the deprecated 'pretrained')")
            kwargs["pretrained"] = args[0]
        if "pretrained" in kwargs:
            pretrained = kwargs.pop("pretrained")
            if kwargs.get("weights") is not None and pretrained:
                raise ValueError("pass either 'weights' or the deprecated 'pretrained', not both")
            warnings.warn("The parameter 'pretrained' is deprecated since 0.13 and may be "
                          "removed in the future, please use 'weights' instead.", UserWarning)
            legacy = getattr(weights_enum, "IMAGENET1K_V1", None) or weights_enum.DEFAULT
            kwargs["weights"] = legacy if pretrained else kwargs.get("weights")
        return fn(**kwargs)
    return builder


def register_model(name: str | None = None, weights: type | None = None) -> Callable:
    """Record a builder under ``name`` (default its own name) with its weights enum."""
    def wrapper(fn: Callable) -> Callable:
        key = name if name is not None else fn.__name__
        if weights is not None:
            fn = _handle_legacy_pretrained(fn, weights)
            _MODEL_WEIGHTS[fn] = weights
        if key in BUILTIN_MODELS:
            raise ValueError(f"An entry is already registered under the name '{key}'.")
        BUILTIN_MODELS[key] = fn
        return fn
    return wrapper


def list_models(module: Any = None, include: Any = None, exclude: Any = None) -> list[str]:
    import fnmatch
    models = set(BUILTIN_MODELS)
    if include:
        pats = [include] if isinstance(include, str) else include
        models = {m for m in models if any(fnmatch.fnmatch(m, p) for p in pats)}
    if exclude:
        pats = [exclude] if isinstance(exclude, str) else exclude
        models = {m for m in models if not any(fnmatch.fnmatch(m, p) for p in pats)}
    return sorted(models)


def get_model(name: str, **config: Any) -> Any:
    name = name.lower()
    try:
        fn = BUILTIN_MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name}") from None
    return fn(**config)


def get_model_weights(name: Any) -> type:
    """The weights enum class of a model (by name or builder)."""
    fn = BUILTIN_MODELS[name.lower()] if isinstance(name, str) else name
    return _MODEL_WEIGHTS[fn]


def get_weight(name: str) -> WeightsEnum:
    enum_name, value_name = name.split(".")
    import ember.vision.models as models
    cls = getattr(models, enum_name, None)
    if cls is not None:
        return cls[value_name]
    raise ValueError(f"The weight enum '{enum_name}' for the specific method couldn't be "
                     f"retrieved.")


def _ovewrite_named_param(kwargs: dict[str, Any], param: str, new_value: Any) -> None:
    if param in kwargs:
        if kwargs[param] != new_value:
            raise ValueError(f"The parameter '{param}' expected value {new_value} but got "
                             f"{kwargs[param]} instead.")
    else:
        kwargs[param] = new_value
