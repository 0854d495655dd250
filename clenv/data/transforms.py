"""Image augmentation and normalisation on uint8 batches, in numpy (no torchvision).

Augmentations take a batch ``(B, C, H, W)`` of uint8 images and a
``numpy.random.Generator`` and return a new uint8 batch; every example gets its own
random draw. They follow LoP's incremental CIFAR-100 pipeline (Dohare et al. 2024,
``lop/incremental_cifar``): horizontal flip with p = 0.5, a 32x32 crop of the image
padded by 4 pixels (reflect padding), and a rotation by an angle drawn uniformly from
[0, 15] degrees (nearest neighbour).

:class:`PixelScaler` turns uint8 pixels into float32 values in [0, 1], optionally
normalised per channel as LoP does.
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
    padded = _reflect_pad(images, padding)
    top = rng.integers(0, 2 * padding + 1, batch)
    left = rng.integers(0, 2 * padding + 1, batch)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), (2, 3))
    # windows: (B, C, offsets_y, offsets_x, H, W); pick one offset pair per image.
    return windows[np.arange(batch), :, top, left]


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
    src_y, src_x, inside = _rotation_sources(degrees, height, width)
    return _gather(images, src_y * width + src_x, inside, fill)


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
    """LoP's training augmentation: flip (p = 0.5), padded crop, then rotation.

    Equal to ``random_rotation(random_crop(random_horizontal_flip(x, rng), rng), rng)``
    (same random draws, in that order), computed as one gather from the padded batch:
    each output pixel's source is found by rotating back, shifting by the crop offset
    and mirroring (reflect padding commutes with a horizontal flip).
    """
    batch, _, height, width = images.shape
    flip = rng.random(batch) < 0.5
    padded = _reflect_pad(images, crop_padding) if crop_padding else images
    if crop_padding:
        top = rng.integers(0, 2 * crop_padding + 1, batch)[:, None, None]
        left = rng.integers(0, 2 * crop_padding + 1, batch)[:, None, None]
    else:
        top = left = np.zeros((batch, 1, 1), np.intp)
    degrees = rng.uniform(0.0, max_rotation, batch) if max_rotation else np.zeros(batch)
    src_y, src_x, inside = _rotation_sources(degrees, height, width)
    padded_width = padded.shape[3]
    src_x = src_x + left
    src_x = np.where(flip[:, None, None], padded_width - 1 - src_x, src_x)
    return _gather(padded, (src_y + top) * padded_width + src_x, inside, fill)


def _reflect_pad(images: np.ndarray, padding: int) -> np.ndarray:
    width = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    return np.pad(images, width, "reflect")


def _rotation_sources(
    degrees: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel, the (clipped) source row and column of a counter-clockwise
    rotation, and whether that source lies inside the image. Shapes ``(B, H, W)``."""
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
    return src_y, src_x, inside


def _gather(
    images: np.ndarray,
    flat_index: np.ndarray,
    inside: np.ndarray,
    fill: Sequence[int] | int,
) -> np.ndarray:
    """Output ``(B, C, H, W)``: pixel (b, c, i, j) = ``images[b, c].flat[flat_index[b,
    i, j]]`` where ``inside``, else ``fill[c]``."""
    batch, channels = images.shape[:2]
    height, width = flat_index.shape[1:]
    # One flat gather (np.take_along_axis is several times slower here).
    plane = images[0, 0].size
    offsets = (np.arange(batch * channels) * plane).reshape(batch, channels, 1)
    index = offsets + flat_index.reshape(batch, 1, -1)
    out = np.take(np.ascontiguousarray(images).reshape(-1), index)
    fill_values = np.broadcast_to(np.asarray(fill, np.uint8), (channels,))
    out = np.where(inside.reshape(batch, 1, -1), out, fill_values[None, :, None])
    return out.reshape(batch, channels, height, width)


class PixelScaler:
    """uint8 pixels -> float32 ``x / 255``, optionally ``(x / 255 - mean) / std``.

    Computed in float32 (``x / 255`` is correctly rounded, so 255 maps to exactly 1).
    Arithmetic rather than a lookup table: numpy's gather from a table is several
    times slower than a divide on these sizes. ``divisor=1`` keeps the pixel values
    (0..255 as float32), as both papers feed Continual ImageNet's images.

    Args:
        channels: number of channels (1 for flat grey images such as MNIST).
        mean: per-channel mean in ``x / divisor`` units, or None for plain
            ``x / divisor``.
        std: per-channel standard deviation, or None.
        channel_axis: axis of the channel in a batch (1 for ``(B, C, H, W)``), counted
            from the end when negative (-3 for ``(..., C, H, W)``).
        divisor: the pixels are divided by it first (255: values in [0, 1]).
    """

    def __init__(
        self,
        channels: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channel_axis: int = -3,
        divisor: float = 255.0,
    ) -> None:
        if not divisor > 0:
            raise ValueError(f"divisor must be positive, got {divisor}")
        self.divisor = np.float32(divisor)
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
        if self.divisor != 1:
            out /= self.divisor
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
