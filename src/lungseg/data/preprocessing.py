"""The image preprocessing pipeline of the users' reference study, as pure, switchable steps.

Order: Gaussian blur -> morphological gradient (applied ``iterations`` times) -> CLAHE ->
normalisation (min-max stretch to the full 0..255 range) -> resize to the working size.
Every step maps ``uint8[H, W] -> uint8[H, W]``; images are transformed, masks are only resized
(:func:`resize_mask`). The steps and their parameters are recorded with every prepared dataset and
checkpoint so inference applies exactly what training saw.

:data:`PRESETS` is the one table of presets (which steps run); a preset is an input shorthand
for its switches, never stored beside them: :attr:`PreprocessConfig.preset` is read back from
the switches. OpenCV and NumPy are imported inside the steps, not at the top, so the command
line can show the presets and defaults in its help without loading them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from lungseg.core.errors import LungsegError

if TYPE_CHECKING:
    import numpy as np

#: Which steps each preset runs. ``seed``: every step, as the study did; ``clahe``: blur + CLAHE,
#: no gradient; ``none``: normalise and resize only.
PRESETS: dict[str, dict[str, bool]] = {
    "seed": {"blur": True, "gradient": True, "clahe": True, "normalize": True},
    "clahe": {"blur": True, "gradient": False, "clahe": True, "normalize": True},
    "none": {"blur": False, "gradient": False, "clahe": False, "normalize": True},
}
DEFAULT_PRESET = "seed"
#: A configuration whose switches match no preset.
CUSTOM = "custom"
_DEFAULT_STEPS = PRESETS[DEFAULT_PRESET]


@dataclass
class PreprocessConfig:
    """Which steps run and with what parameters. Round-trips through a plain dict.

    The defaults are the :data:`DEFAULT_PRESET` at a working size of 256. As input (YAML, flags,
    :func:`~lungseg.core.config.from_dict`), ``preset: NAME`` stands for that preset's switches;
    switches given beside it override it.
    """

    size: int = field(default=256, metadata={"range": (1, 16384)})
    blur: bool = _DEFAULT_STEPS["blur"]
    blur_ksize: int = 5
    blur_sigma: float = 0.0
    gradient: bool = _DEFAULT_STEPS["gradient"]
    gradient_ksize: int = 3
    gradient_iterations: int = 2
    clahe: bool = _DEFAULT_STEPS["clahe"]
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    normalize: bool = _DEFAULT_STEPS["normalize"]

    def __post_init__(self) -> None:
        if self.size < 16:
            raise LungsegError(f"working size {self.size} is too small; use at least 16")
        if self.blur_ksize < 1 or self.blur_ksize % 2 == 0:
            raise LungsegError(f"blur_ksize must be an odd positive number, got {self.blur_ksize}")

    @classmethod
    def from_preset(cls, name: str, size: int | None = None) -> PreprocessConfig:
        """The settings of preset ``name`` (see :data:`PRESETS`), at ``size`` (default 256)."""
        given = {} if size is None else {"size": size}
        return cls(**cls.expand_input({"preset": name, **given}))

    def with_preset(self, name: str) -> PreprocessConfig:
        """These settings with the steps of preset ``name`` switched on or off; every parameter
        (size, kernel sizes, CLAHE limit...) stays as it is."""
        return replace(self, **self.expand_input({"preset": name}))

    @classmethod
    def expand_input(cls, data: Mapping[str, Any], where: str = "preprocess") -> dict[str, Any]:
        """``{"preset": NAME, ...}`` -> the preset's switches, then the other keys given."""
        data = dict(data)
        name = data.pop("preset", None)
        if name is None:
            return data
        if name not in PRESETS:
            raise LungsegError(
                f"unknown preprocessing preset {name!r} in {where}; "
                f"valid presets: {', '.join(PRESETS)}"
            )
        return {**PRESETS[name], **data}

    @property
    def preset(self) -> str:
        """The preset whose switches these are, or ``custom``."""
        switches = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, steps in PRESETS.items():
            if all(switches[k] == v for k, v in steps.items()):
                return name
        return CUSTOM

    def steps(self) -> list[str]:
        """Names of the enabled steps in the order they run."""
        flags = [
            ("gaussian_blur", self.blur),
            ("morphological_gradient", self.gradient),
            ("clahe", self.clahe),
            ("normalize", self.normalize),
            ("resize", True),
        ]
        return [name for name, on in flags if on]


def gaussian_blur(image: np.ndarray, ksize: int = 5, sigma: float = 0.0) -> np.ndarray:
    """``uint8[H, W] -> uint8[H, W]``: Gaussian blur with an odd ``ksize`` (sigma 0: from ksize)."""
    import cv2

    return cv2.GaussianBlur(image, (ksize, ksize), sigma)


def morphological_gradient(image: np.ndarray, ksize: int = 3, iterations: int = 2) -> np.ndarray:
    """``uint8[H, W] -> uint8[H, W]``: dilation minus erosion, applied ``iterations`` times."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (ksize, ksize))
    for _ in range(iterations):
        image = cv2.morphologyEx(image, cv2.MORPH_GRADIENT, kernel)
    return image


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """``uint8[H, W] -> uint8[H, W]``: contrast-limited adaptive histogram equalisation."""
    import cv2

    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(image)


def normalize(image: np.ndarray) -> np.ndarray:
    """``uint8[H, W] -> uint8[H, W]``: min-max stretch to 0..255 (a constant image becomes 0)."""
    import cv2

    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8[H, W] -> uint8[size, size]``: area interpolation to shrink, linear to grow."""
    import cv2

    if image.shape == (size, size):
        return image
    shrinking = image.shape[0] * image.shape[1] > size * size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``bool|uint8[H, W] -> same dtype [h, w]`` by nearest neighbour, so a mask stays binary."""
    import cv2

    if mask.shape == tuple(shape):
        return mask
    h, w = shape
    out = cv2.resize(mask.view("uint8"), (w, h), interpolation=cv2.INTER_NEAREST)
    return out.astype(mask.dtype, copy=False)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Run the enabled steps on one image: ``uint8[H, W] -> uint8[size, size]``.

    The filters run at the image's own resolution when it is near the working size (the
    database's 299x299 images, as in the study). Larger originals (up to 4000 px) are first shrunk
    to 1.25x the working size, so a 5x5 blur or a 3x3 gradient covers the same share of the chest
    whatever the file's size, and the work per image stays bounded.
    """
    if image.dtype != "uint8" or image.ndim != 2:
        raise ValueError(f"expected uint8[H, W], got {image.dtype}{list(image.shape)}")
    image = _bring_near(image, config.size)
    if config.blur:
        image = gaussian_blur(image, config.blur_ksize, config.blur_sigma)
    if config.gradient:
        image = morphological_gradient(image, config.gradient_ksize, config.gradient_iterations)
    if config.clahe:
        image = clahe(image, config.clahe_clip_limit, config.clahe_tile_grid)
    if config.normalize:
        image = normalize(image)
    return resize_image(image, config.size)


#: Originals larger than this multiple of the working size are first shrunk to it.
_NEAR_FACTOR = 1.25


def _bring_near(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    limit = int(size * _NEAR_FACTOR)
    h, w = image.shape
    if max(h, w) <= limit:
        return image
    return cv2.resize(image, (limit, limit), interpolation=cv2.INTER_AREA)
