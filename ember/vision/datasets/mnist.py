"""MNIST-family datasets: MNIST, FashionMNIST, KMNIST, EMNIST, QMNIST.

The files are the original idx-ubyte files (gzipped or not) in torchvision's layout
``root/<ClassName>/raw/``. ``download=True`` fetches them from the mirrors, checks the md5 and
decompresses them there.
"""
from __future__ import annotations

import gzip
import lzma
import os
import shutil
import string
from typing import Any, Callable
from urllib.error import URLError

import numpy as np

import ember
from ember.vision.datasets.utils import (download_and_extract_archive, extract_archive,
                                         verify_str_arg)
from ember.vision.datasets.vision import VisionDataset

__all__ = ["MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "read_image_file",
           "read_label_file", "read_sn3_pascalvincent_tensor"]

# idx type codes -> big-endian NumPy dtypes
_SN3_TYPES = {8: np.dtype(">u1"), 9: np.dtype(">i1"), 11: np.dtype(">i2"), 12: np.dtype(">i4"),
              13: np.dtype(">f4"), 14: np.dtype(">f8")}


def _open_maybe_compressed(path: str) -> Any:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _resolve(path: str) -> str:
    """``path`` itself, or its ``.gz``/``.xz`` sibling when only the compressed file exists."""
    if os.path.isfile(path):
        return path
    for ext in (".gz", ".xz"):
        if os.path.isfile(path + ext):
            return path + ext
    return path


def read_sn3_pascalvincent_tensor(path: str, strict: bool = True) -> ember.Tensor:
    """Read an idx file (LeCun's format): magic, big-endian dims, then big-endian data."""
    with _open_maybe_compressed(_resolve(path)) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise RuntimeError(f"{path} is not an idx file (bad magic number)")
    nd = data[3]
    ty = data[2]
    if ty not in _SN3_TYPES:
        raise RuntimeError(f"{path}: unknown idx data type code {ty:#x}")
    dims = [int.from_bytes(data[4 * (i + 1): 4 * (i + 2)], "big") for i in range(nd)]
    dt = _SN3_TYPES[ty]
    count = int(np.prod(dims)) if dims else 1
    offset = 4 * (nd + 1)
    if strict and len(data) - offset != count * dt.itemsize:
        raise RuntimeError(f"{path}: expected {count * dt.itemsize} data bytes for shape "
                           f"{tuple(dims)}, found {len(data) - offset}")
    arr = np.frombuffer(data, dtype=dt, count=count, offset=offset)
    return ember.from_numpy(arr.astype(dt.newbyteorder("="), copy=True).reshape(dims))


def read_label_file(path: str) -> ember.Tensor:
    x = read_sn3_pascalvincent_tensor(path, strict=False)
    if x.dtype != ember.uint8:
        raise TypeError(f"x should be of dtype torch.uint8 instead of {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"x should have 1 dimension instead of {x.ndim}")
    return x.long()


def read_image_file(path: str) -> ember.Tensor:
    x = read_sn3_pascalvincent_tensor(path, strict=False)
    if x.dtype != ember.uint8:
        raise TypeError(f"x should be of dtype torch.uint8 instead of {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x should have 3 dimension instead of {x.ndim}")
    return x


class MNIST(VisionDataset):
    """`MNIST <http://yann.lecun.com/exdb/mnist/>`_: 28x28 grey digits, 60k train, 10k test.

    Args:
        root: directory holding ``MNIST/raw/``.
        train: the training split (else the test split).
        transform: applied to the PIL image. target_transform: applied to the label.
        download: fetch the files into ``root`` first if they are missing.
    """

    mirrors = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
               "http://yann.lecun.com/exdb/mnist/"]
    resources = [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ]
    training_file = "training.pt"
    test_file = "test.pt"
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
               "6 - six", "7 - seven", "8 - eight", "9 - nine"]

    def __init__(self, root: str | os.PathLike, train: bool = True,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 download: bool = False) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_exists():
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        self.data, self.targets = self._load_data()

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, self.__class__.__name__, "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, self.__class__.__name__, "processed")

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {_class: i for i, _class in enumerate(self.classes)}

    def _file_names(self) -> tuple[str, str]:
        prefix = "train" if self.train else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def _load_data(self) -> tuple[ember.Tensor, ember.Tensor]:
        image_file, label_file = self._file_names()
        data = read_image_file(os.path.join(self.raw_folder, image_file))
        targets = read_label_file(os.path.join(self.raw_folder, label_file))
        return data, targets

    def _check_exists(self) -> bool:
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in self.resources]
        return all(os.path.isfile(_resolve(os.path.join(self.raw_folder, n))) for n in names)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from PIL import Image
        img, target = self.data[index], int(self.targets[index])
        # PIL image, so that every dataset hands transforms the same kind of input
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self) -> int:
        return len(self.data)

    def download(self) -> None:
        """Fetch each file from the first mirror that answers, check md5, decompress."""
        if self._check_exists():
            return
        os.makedirs(self.raw_folder, exist_ok=True)
        for filename, md5 in self.resources:
            errors = []
            for mirror in self.mirrors:
                url = f"{mirror}{filename}"
                try:
                    download_and_extract_archive(url, download_root=self.raw_folder,
                                                 filename=filename, md5=md5)
                except (URLError, OSError, RuntimeError) as error:
                    errors.append(f"{url}: {error}")
                    continue
                break
            else:
                raise RuntimeError(f"Error downloading {filename}:\n" + "\n".join(errors))

    def extra_repr(self) -> str:
        split = "Train" if self.train is True else "Test"
        return f"Split: {split}"


class FashionMNIST(MNIST):
    """`Fashion-MNIST <https://github.com/zalandoresearch/fashion-mnist>`_."""

    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    resources = [
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


class KMNIST(MNIST):
    """`Kuzushiji-MNIST <https://github.com/rois-codh/kmnist>`_."""

    mirrors = ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"]
    resources = [
        ("train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
        ("train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
        ("t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
        ("t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134"),
    ]
    classes = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]


class EMNIST(MNIST):
    """`EMNIST <https://www.westernsydney.edu.au/bens/home/reproducible_research/emnist>`_.

    Args:
        split: one of ``byclass``, ``bymerge``, ``balanced``, ``letters``, ``digits``, ``mnist``.
    """

    url = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
    md5 = "58c8d27c78d21e728a6bc7b3cc06412e"
    splits = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")
    # merged classes: upper and lower case letters that look alike share one label
    _merged_classes = {"c", "i", "j", "k", "l", "m", "o", "p", "s", "u", "v", "w", "x", "y",
                       "z"}
    _all_classes = set(string.digits + string.ascii_letters)
    classes_split_dict = {
        "byclass": sorted(list(_all_classes)),
        "bymerge": sorted(list(_all_classes - _merged_classes)),
        "balanced": sorted(list(_all_classes - _merged_classes)),
        "letters": ["N/A"] + list(string.ascii_lowercase),
        "digits": list(string.digits),
        "mnist": list(string.digits),
    }

    def __init__(self, root: str | os.PathLike, split: str, **kwargs: Any) -> None:
        self.split = verify_str_arg(split, "split", self.splits)
        self.classes = self.classes_split_dict[self.split]
        super().__init__(root, **kwargs)

    def _file_names(self) -> tuple[str, str]:
        kind = "train" if self.train else "test"
        return (f"emnist-{self.split}-{kind}-images-idx3-ubyte",
                f"emnist-{self.split}-{kind}-labels-idx1-ubyte")

    def _check_exists(self) -> bool:
        return all(os.path.isfile(_resolve(os.path.join(self.raw_folder, n)))
                   for n in self._file_names())

    def download(self) -> None:
        if self._check_exists():
            return
        os.makedirs(self.raw_folder, exist_ok=True)
        download_and_extract_archive(self.url, download_root=self.raw_folder, md5=self.md5)
        gzip_folder = os.path.join(self.raw_folder, "gzip")
        for gzip_file in os.listdir(gzip_folder):
            if gzip_file.endswith(".gz"):
                extract_archive(os.path.join(gzip_folder, gzip_file), self.raw_folder)
        shutil.rmtree(gzip_folder)


class QMNIST(MNIST):
    """`QMNIST <https://github.com/facebookresearch/qmnist>`_ with its extended labels.

    Args:
        what: ``train``, ``test``, ``test10k``, ``test50k`` or ``nist``.
        compat: targets are the class index (True) or the full 8-column label row (False).
    """

    subsets = {"train": "train", "test": "test", "test10k": "test", "test50k": "test",
               "nist": "nist"}
    resources = {
        "train": [("https://raw.githubusercontent.com/facebookresearch/qmnist/master/"
                   "qmnist-train-images-idx3-ubyte.gz", "ed72d4157d28c017586c42bc6afe6370"),
                  ("https://raw.githubusercontent.com/facebookresearch/qmnist/master/"
                   "qmnist-train-labels-idx2-int.gz", "0058f8dd561b90ffdd0f734c6a30e5e4")],
        "test": [("https://raw.githubusercontent.com/facebookresearch/qmnist/master/"
                  "qmnist-test-images-idx3-ubyte.gz", "1394631089c404de565df7b7aeaf9412"),
                 ("https://raw.githubusercontent.com/facebookresearch/qmnist/master/"
                  "qmnist-test-labels-idx2-int.gz", "5b5b05890a5e13444e108efe57b788aa")],
        "nist": [("https://raw.githubusercontent.com/facebookresearch/qmnist/master/"
                  "xnist-images-idx3-ubyte.xz", "7f124b3b8ab81486c9d8c2749c17f834"),
                 ("https://raw.githubusercontent.com/facebookresearch/qmnist/master/"
                  "xnist-labels-idx2-int.xz", "5ed0e788978e45d4a8bd4b7caec3d79d")],
    }
    classes = MNIST.classes

    def __init__(self, root: str | os.PathLike, what: str | None = None, compat: bool = True,
                 train: bool = True, **kwargs: Any) -> None:
        if what is None:
            what = "train" if train else "test"
        self.what = verify_str_arg(what, "what", tuple(self.subsets.keys()))
        self.compat = compat
        self.data_file = what + ".pt"
        super().__init__(root, train, **kwargs)

    def _file_names(self) -> tuple[str, str]:
        names = [os.path.splitext(os.path.basename(url))[0]
                 for url, _ in self.resources[self.subsets[self.what]]]
        return names[0], names[1]

    def _check_exists(self) -> bool:
        return all(os.path.isfile(_resolve(os.path.join(self.raw_folder, n)))
                   for n in self._file_names())

    def _load_data(self) -> tuple[ember.Tensor, ember.Tensor]:
        image_file, label_file = self._file_names()
        data = read_sn3_pascalvincent_tensor(os.path.join(self.raw_folder, image_file))
        if data.dtype != ember.uint8 or data.ndim != 3:
            raise ValueError(f"{image_file}: expected uint8 images (N, H, W)")
        targets = read_sn3_pascalvincent_tensor(os.path.join(self.raw_folder, label_file))
        if targets.ndim != 2:
            raise ValueError(f"{label_file}: expected 2-d int labels (N, 8)")
        if self.what == "test10k":
            data = data[0:10000, :, :].clone()
            targets = targets[0:10000, :].clone()
        elif self.what == "test50k":
            data = data[10000:, :, :].clone()
            targets = targets[10000:, :].clone()
        return data, targets.long()

    def download(self) -> None:
        if self._check_exists():
            return
        os.makedirs(self.raw_folder, exist_ok=True)
        for url, md5 in self.resources[self.subsets[self.what]]:
            download_and_extract_archive(url, self.raw_folder, md5=md5)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from PIL import Image
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        if self.compat:
            target = int(target[0])
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def extra_repr(self) -> str:
        return f"Split: {self.what}"
