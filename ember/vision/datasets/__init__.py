"""Datasets (``torchvision.datasets``) reading the original files in torchvision's layout."""
from ember.vision.datasets.vision import VisionDataset, StandardTransform  # noqa: F401
from ember.vision.datasets.mnist import (  # noqa: F401
    MNIST, FashionMNIST, KMNIST, EMNIST, QMNIST)
from ember.vision.datasets.cifar import CIFAR10, CIFAR100  # noqa: F401
from ember.vision.datasets.svhn import SVHN  # noqa: F401
from ember.vision.datasets.folder import DatasetFolder, ImageFolder  # noqa: F401
from ember.vision.datasets.fakedata import FakeData  # noqa: F401
from ember.vision.datasets import utils  # noqa: F401

__all__ = ["VisionDataset", "MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "CIFAR10",
           "CIFAR100", "SVHN", "DatasetFolder", "ImageFolder", "FakeData"]
