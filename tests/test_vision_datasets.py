"""ember.vision.datasets on small files written in the real formats (no network)."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

import ember
from ember.vision import datasets, transforms
from ember.vision.datasets.utils import calculate_md5, extract_archive

Image = pytest.importorskip("PIL.Image")


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 8, np.dtype(np.int32): 12}[arr.dtype]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(
        struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, data, gz):
    if gz:
        with gzip.open(path + ".gz", "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


@pytest.mark.parametrize("cls", [datasets.MNIST, datasets.FashionMNIST, datasets.KMNIST])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_family_reads_idx(tmp_path, cls, gz):
    raw = tmp_path / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        _write(str(raw / f"{prefix}-images-idx3-ubyte"), _idx_bytes(imgs), gz)
        _write(str(raw / f"{prefix}-labels-idx1-ubyte"), _idx_bytes(labels), gz)
        written[prefix] = (n, imgs, labels)
    for prefix, (n, imgs, labels) in written.items():
        ds = cls(str(tmp_path), train=prefix == "train")
        assert len(ds) == n
        assert ds.data.dtype == ember.uint8 and ds.targets.dtype == ember.int64
        img, target = ds[1]
        assert isinstance(img, Image.Image) and img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), imgs[1])
        assert target == int(labels[1])
    ds = cls(str(tmp_path), train=True, transform=transforms.ToTensor())
    x, _ = ds[0]
    assert tuple(x.shape) == (1, 28, 28)
    assert len(ds.classes) == 10


def test_mnist_missing_raises(tmp_path):
    with pytest.raises(RuntimeError, match="Dataset not found"):
        datasets.MNIST(str(tmp_path))


def test_emnist_and_qmnist(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    _write(str(raw / "emnist-letters-train-images-idx3-ubyte"), _idx_bytes(imgs), True)
    _write(str(raw / "emnist-letters-train-labels-idx1-ubyte"),
           _idx_bytes(np.array([1, 26], np.uint8)), True)
    ds = datasets.EMNIST(str(tmp_path), split="letters")
    assert len(ds) == 2 and ds.classes[26] == "z" and ds[1][1] == 26
    with pytest.raises(ValueError):
        datasets.EMNIST(str(tmp_path), split="nope")
    raw = tmp_path / "QMNIST" / "raw"
    raw.mkdir(parents=True)
    _write(str(raw / "qmnist-test-images-idx3-ubyte"), _idx_bytes(imgs), True)
    labels = np.arange(16, dtype=np.int32).reshape(2, 8)
    _write(str(raw / "qmnist-test-labels-idx2-int"), _idx_bytes(labels), True)
    q = datasets.QMNIST(str(tmp_path), what="test")
    assert q[1][1] == 8
    q = datasets.QMNIST(str(tmp_path), what="test", compat=False)
    np.testing.assert_array_equal(q[1][1].numpy(), labels[1])


def _cifar_files(root, folder, names, label_key, meta_name, meta_key, n=4):
    d = root / folder
    d.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
        batches[name] = (data, labels)
    with open(d / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"c{i}" for i in range(10)]}, f)
    return d, batches


def test_cifar10_reads_batches_and_checks_md5(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    d, batches = _cifar_files(tmp_path, "cifar-10-batches-py", names, "labels", "batches.meta",
                              "label_names")
    with pytest.raises(RuntimeError, match="corrupted"):
        datasets.CIFAR10(str(tmp_path))  # torchvision's md5s do not match our files

    class Local(datasets.CIFAR10):
        train_list = [[n, calculate_md5(str(d / n))] for n in names[:5]]
        test_list = [["test_batch", calculate_md5(str(d / "test_batch"))]]
        meta = {"filename": "batches.meta", "key": "label_names",
                "md5": calculate_md5(str(d / "batches.meta"))}

    ds = Local(str(tmp_path), train=True)
    assert len(ds) == 20 and ds.classes[3] == "c3"
    img, target = ds[5]
    data, labels = batches["data_batch_2"]
    np.testing.assert_array_equal(np.asarray(img), data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert target == labels[1]
    assert len(Local(str(tmp_path), train=False)) == 4


def test_cifar100_fine_labels(tmp_path):
    d, batches = _cifar_files(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels",
                              "meta", "fine_label_names")

    class Local(datasets.CIFAR100):
        train_list = [["train", calculate_md5(str(d / "train"))]]
        test_list = [["test", calculate_md5(str(d / "test"))]]
        meta = {"filename": "meta", "key": "fine_label_names",
                "md5": calculate_md5(str(d / "meta"))}

    ds = Local(str(tmp_path), train=False)
    assert ds[2][1] == batches["test"][1][2]


def test_svhn_from_mat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 3), dtype=np.uint8)
    y = np.array([[10], [3], [1]], dtype=np.uint8)
    sio.savemat(str(tmp_path / "test_32x32.mat"), {"X": x, "y": y})

    class Local(datasets.SVHN):
        split_list = {"test": ["", "test_32x32.mat",
                               calculate_md5(str(tmp_path / "test_32x32.mat"))]}

    ds = Local(str(tmp_path), split="test")
    img, target = ds[0]
    assert target == 0 and ds[1][1] == 3  # label 10 means the digit 0
    np.testing.assert_array_equal(np.asarray(img), x[:, :, :, 0])


def test_image_folder_and_dataset_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((4, 5, 3), i * 40, np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = datasets.ImageFolder(str(tmp_path))
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1]
    img, t = ds[3]
    assert img.mode == "RGB" and img.size == (5, 4) and t == 1
    dsf = datasets.DatasetFolder(str(tmp_path), loader=lambda p: open(p, "rb").read(),
                                 is_valid_file=lambda p: p.endswith(".txt"), allow_empty=True)
    assert len(dsf) == 1 and dsf[0][0] == b"not an image"
    with pytest.raises(ValueError):
        datasets.DatasetFolder(str(tmp_path), loader=print, extensions=(".png",),
                               is_valid_file=lambda p: True)
    with pytest.raises(FileNotFoundError):
        datasets.DatasetFolder(str(tmp_path), loader=print, extensions=(".jpg",))


def test_fake_data_deterministic_and_loader():
    ds = datasets.FakeData(size=6, image_size=(3, 8, 8), num_classes=4,
                           transform=transforms.ToTensor())
    a, ta = ds[2]
    b, tb = ds[2]
    assert (a == b).all() and ta == tb and 0 <= ta < 4
    loader = ember.utils.data.DataLoader(ds, batch_size=3)
    xb, yb = next(iter(loader))
    assert tuple(xb.shape) == (3, 3, 8, 8) and tuple(yb.shape) == (3,)
    with pytest.raises(IndexError):
        ds[6]


def test_extract_archive_tar_zip_gz(tmp_path):
    import tarfile
    import zipfile
    src = tmp_path / "a.txt"
    src.write_text("hello")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="in_tar.txt")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(src, arcname="in_zip.txt")
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(b"gz")
    out = tmp_path / "out"
    out.mkdir()
    extract_archive(str(tmp_path / "a.tar.gz"), str(out))
    extract_archive(str(tmp_path / "a.zip"), str(out))
    extract_archive(str(tmp_path / "b.txt.gz"), str(out))
    assert (out / "in_tar.txt").read_text() == "hello"
    assert (out / "in_zip.txt").read_text() == "hello"
    assert (out / "b.txt").read_bytes() == b"gz"
    assert os.path.getsize(out / "b.txt") == 2


def test_mnist_download_path_with_mirror_fallback(tmp_path):
    """download=True runs the real code: mirror URLs, md5 check, gunzip into raw/.

    The 'mirrors' are file:// URLs (no network); the first one is missing, so the loop has
    to fall back to the second."""
    src = tmp_path / "mirror"
    src.mkdir()
    rng = np.random.default_rng(7)
    resources = []
    for prefix, n in (("train", 4), ("t10k", 2)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                          ("labels-idx1", rng.integers(0, 10, n).astype(np.uint8))):
            name = f"{prefix}-{kind}-ubyte.gz"
            with gzip.open(src / name, "wb") as f:
                f.write(_idx_bytes(arr))
            resources.append((name, calculate_md5(str(src / name))))

    class Mirrored(datasets.MNIST):
        mirrors = [f"file://{tmp_path}/missing/", f"file://{src}/"]

    Mirrored.resources = resources
    root = tmp_path / "data"
    ds = Mirrored(str(root), train=True, download=True)
    assert len(ds) == 4
    assert (root / "Mirrored" / "raw" / "train-images-idx3-ubyte").is_file()
    bad = [(n, "0" * 32) for n, _ in resources]

    class Corrupt(Mirrored):
        resources = bad

    with pytest.raises(RuntimeError, match="Error downloading"):
        Corrupt(str(tmp_path / "other"), download=True)
