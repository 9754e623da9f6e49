"""``FakeData``: random images, the same image for the same index on every call."""
from __future__ import annotations

from typing import Any, Callable

import ember
from ember.vision.datasets.vision import VisionDataset

__all__ = ["FakeData"]


class FakeData(VisionDataset):
    """Random normal images and uniform labels, seeded by ``index + random_offset``.

    Args:
        size: number of samples. image_size: ``(C, H, W)``. num_classes: label range.
    """

    def __init__(self, size: int = 1000, image_size: tuple[int, int, int] = (3, 224, 224),
                 num_classes: int = 10, transform: Callable | None = None,
                 target_transform: Callable | None = None, random_offset: int = 0) -> None:
        super().__init__(None, transform=transform, target_transform=target_transform)
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.random_offset = random_offset

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from ember.vision import transforms
        if index >= len(self):
            raise IndexError(f"{self.__class__.__name__} index out of range")
        # a private generator: the sample depends only on the index, and the global stream
        # (other random transforms) is left untouched
        g = ember.Generator().manual_seed(index + self.random_offset)
        img = ember.randn(*self.image_size, generator=g)
        target = int(ember.randint(0, self.num_classes, size=(1,), dtype=ember.long,
                                   generator=g)[0])
        img = transforms.ToPILImage()(img)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self) -> int:
        return self.size
