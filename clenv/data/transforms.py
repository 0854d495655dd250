"""Image augmentation and normalisation on uint8 batches, in numpy (no torchvision).

Augmentations take a batch ``(B, C, H, W)`` of uint8 images and a
``numpy.random.Generator`` and return a new uint8 batch; every example gets its own
random draw. They follow LoP's incremental CIFAR-100 pipeline (Dohare et al. 2024,
``lop/incremental_cifar``): horizontal flip with p = 0.5, a 32x32 crop of the image
padded by 4 pixels (reflect padding), and a rotation by an angle drawn uniformly from
[0, 15] degrees (nearest neighbour).

:class:`PixelScaler` turns uint8 pixels into float32 values in [0, 1], optionally
optionally normalised per channel as LoP does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# LoP's per-channel statistics for CIFAR-100 (lop/incremental_cifar).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def random_horizontal_flip(
    images: np.ndarray, rng: np.random.Generator, p: float = 0.5
) -> np.ndarray:
    """Mirror each image left-right with probability ``p``."""
    out = images.copy()
    flip = rng.random(len(images)) < p
    out[flip] = images[flip][..., ::-1]
    return out


def random_crop(
    images: np.ndarray, rng: np.random.Generator, padding: int = 4
) -> np.ndarray:
    """Pad by ``padding`` pixels (reflect) and crop back to the original size at a
    random offset per image."""
    if padding == 0:
        return images.copy()
    batch, _, height, width = images.shape
    padded = np.pad(
        images, ((0, 0), (0, 0), (padding, padding), (padding, padding)), "reflect"
    )
    top = rng.integers(0, 2 * padding + 1, batch)
    left = rng.integers(0, 2 * padding + 1, batch)
    rows = top[:, None] + np.arange(height)
    cols = left[:, None] + np.arange(width)
    # Advanced indices around a slice put the broadcast axes first: (B, H, W, C).
    cropped = padded[
        np.arange(batch)[:, None, None], :, rows[:, :, None], cols[:, None, :]
    ]
    return np.ascontiguousarray(cropped.transpose(0, 3, 1, 2))


def rotate(
    images: np.ndarray, degrees: np.ndarray, fill: Sequence[int] | int = 0
) -> np.ndarray:
    """Rotate each image counter-clockwise about its centre (nearest neighbour).

    Args:
        images: ``(B, C, H, W)`` uint8.
        degrees: ``(B,)`` angle per image.
        fill: value per channel (or one value) for pixels rotated in from outside.
    """
    batch, channels, height, width = images.shape
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    center_y, center_x = (height - 1) / 2, (width - 1) / 2
    dy, dx = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = dy - center_y, dx - center_x
    # Inverse map: the output pixel at offset (dx, dy) reads the source pixel at the
    # offset rotated back (image y axis points down).
    src_x = np.rint(cos * dx - sin * dy + center_x).astype(np.intp)
    src_y = np.rint(sin * dx + cos * dy + center_y).astype(np.intp)
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    np.clip(src_x, 0, width - 1, out=src_x)
    np.clip(src_y, 0, height - 1, out=src_y)
    rotated = images[np.arange(batch)[:, None, None], :, src_y, src_x]  # (B, H, W, C)
    rotated[~inside] = np.broadcast_to(np.asarray(fill, np.uint8), (channels,))
    return np.ascontiguousarray(rotated.transpose(0, 3, 1, 2))


def random_rotation(
    images: np.ndarray,
    rng: np.random.Generator,
    max_degrees: float = 15.0,
    fill: Sequence[int] | int = 0,
) -> np.ndarray:
    """Rotate each image by an angle drawn uniformly from [0, max_degrees]."""
    if max_degrees == 0:
        return images.copy()
    return rotate(images, rng.uniform(0.0, max_degrees, len(images)), fill)


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    crop_padding: int = 4,
    max_rotation: float = 15.0,
    fill: Sequence[int] | int = 0,
) -> np.ndarray:
    """LoP's training augmentation: flip, padded crop, then rotation."""
    images = random_horizontal_flip(images, rng)
    images = random_crop(images, rng, crop_padding)
    return random_rotation(images, rng, max_rotation, fill)


class PixelScaler:
    """uint8 pixels -> float32 ``x / 255``, optionally ``(x / 255 - mean) / std``.

    Computed in float32 (``x / 255`` is correctly rounded, so 255 maps to exactly 1).
    Arithmetic rather than a lookup table: numpy's gather from a table is several
    times slower than a divide on these sizes.

    Args:
        channels: number of channels (1 for flat grey images such as MNIST).
        mean: per-channel mean in [0, 1] units, or None for plain ``x / 255``.
        std: per-channel standard deviation, or None.
        channel_axis: axis of the channel in a batch (1 for ``(B, C, H, W)``), counted
            from the end when negative (-3 for ``(..., C, H, W)``).
    """

    def __init__(
        self,
        channels: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channel_axis: int = -3,
    ) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for normalisation, or neither")
        self.normalize = mean is not None
        self.channels = channels
        self.channel_axis = channel_axis
        if self.normalize:
            mean_arr, std_arr = np.asarray(mean, float), np.asarray(std, float)
            if mean_arr.shape != (channels,) or std_arr.shape != (channels,):
                raise ValueError(
                    f"mean and std need one value per channel ({channels}), got "
                    f"{mean_arr.shape} and {std_arr.shape}"
                )
            if np.any(std_arr <= 0):
                raise ValueError(f"std must be positive, got {std_arr.tolist()}")
            self.mean = mean_arr.astype(np.float32)
            self.std = std_arr.astype(np.float32)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Scale a uint8 array (any shape; channels along ``channel_axis``)."""
        out = np.asarray(pixels).astype(np.float32)  # always a new array
        out /= np.float32(255)
        if self.normalize:
            shape = [1] * out.ndim
            shape[self.channel_axis] = self.channels
            out -= self.mean.reshape(shape)
            out /= self.std.reshape(shape)
        return out

    def bounds(self, example_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Exact (low, high) of the output for an example shape (pixels 0 and 255)."""
        low = self(np.zeros(example_shape, np.uint8))
        high = self(np.full(example_shape, 255, np.uint8))
        return low, high
