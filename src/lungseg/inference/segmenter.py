"""Segmenting X-rays with a trained model: the Python API behind ``lungseg segment``.

``load_model("unet")`` (a shipped model), ``load_model("path/to/best.pt")`` or
``load_model("runs/unet")`` returns a :class:`Segmenter` that applies exactly the preprocessing and
postprocessing recorded in the checkpoint::

    import lungseg
    model = lungseg.load_model("unet")
    mask = model.predict("chest.png")          # bool[H, W] at the image's own resolution
    prob = model.predict_proba(image_array)    # float32[H, W] in [0, 1]

``load_model("ensemble")`` averages the probabilities of the three shipped models. A model
exported to ONNX (``lungseg export``) loads the same way from its ``.onnx`` file and runs on
ONNX Runtime. ``load_model(..., tta=True)`` averages each prediction over zoomed and rotated
views of the image (:mod:`lungseg.inference.tta`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungseg.core.config import from_dict
from lungseg.core.devices import resolve_device
from lungseg.core.errors import LungsegError
from lungseg.data.io import Decoded, decode_image, to_gray8
from lungseg.data.preprocessing import PreprocessConfig, preprocess
from lungseg.inference.postprocessing import (
    DEFAULT_POSTPROCESS,
    PostprocessConfig,
    postprocess_batch,
)
from lungseg.inference.tta import DEFAULT_VIEWS, TTANetwork, View
from lungseg.models.identity import ModelIdentity, combined_digest, file_digest
from lungseg.models.shipped import (
    ENSEMBLE_MODELS,
    SHIPPED_CONVENTIONS,
    SHIPPED_MODELS,
    SHIPPED_REVIEW_THRESHOLDS,
    shipped_name,
    shipped_weights,
)

ImageLike = str | Path | bytes | np.ndarray | Decoded


#: ``precision`` of :func:`load_model`: ``auto`` is float16 autocast on CUDA, float32 on the CPU.
#: float16 over bfloat16: on 30 real X-rays at 256 its masks agree with float32 at Dice 0.9999
#: (worst image 0.9995) against 0.998 (worst 0.987) for bfloat16 (U-Net, CPU autocast; checked
#: in tests/test_inference.py), at the same tensor-core speed on a GPU.
PRECISIONS = ("auto", "float32", "float16", "bfloat16")


class TorchNetwork:
    """A PyTorch model: ``float32[B, 1, S, S]`` in [0, 1] -> probabilities ``float32[B, S, S]``.

    Channels-last on every device; on CUDA the batch goes up from pinned memory without blocking
    and, by default, runs in float16 autocast. :meth:`probabilities` is the same on device tensors,
    for callers that keep their work on the GPU (test-time augmentation).
    """

    def __init__(self, model: Any, device: str, precision: str = "auto") -> None:
        import torch

        if precision not in PRECISIONS:
            raise LungsegError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.torch = torch
        self.device = device
        self.cuda = device.startswith("cuda")
        if precision == "auto":
            precision = "float16" if self.cuda else "float32"
        self.precision = precision
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision)
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)

    def probabilities(self, x: Any) -> Any:
        """``float32[B, 1, S, S]`` tensor on :attr:`device` -> ``float32[B, S, S]`` there."""
        torch = self.torch
        device_type = "cuda" if self.cuda else "cpu"
        autocast = torch.autocast(device_type, self.dtype, enabled=self.dtype is not None)
        with torch.inference_mode(), autocast:
            logits = self.model(x.contiguous(memory_format=torch.channels_last))
            return torch.sigmoid(logits.float())[:, 0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = self.torch.from_numpy(batch)
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.probabilities(x).cpu().numpy()


class OnnxNetwork:
    """An exported model on ONNX Runtime, same contract as :class:`TorchNetwork`."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise LungsegError(
                "running an ONNX model needs onnxruntime: pip install 'lungseg[onnx]'"
            ) from None
        options = ort.SessionOptions()
        # Memory patterns are planned per input shape: with batches of varying size (a server's)
        # each new size grew the arena, and a long-running service's memory with it. Off, the
        # memory stays flat and batch-1 latency is the same (10.2 against 10.2 ms, unet-fast).
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise LungsegError(f"cannot load ONNX model ({exc})", path) from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input: batch})[0]
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float32))))[:, 0]


@dataclass
class Segmenter:
    """A model with the preprocessing and postprocessing it was trained and tuned with.

    Attributes:
        name: model name (``unet``, ``fcn``, ``deeplabv3``, ``unet-fast``, ``ensemble``), or the
            architecture of a checkpoint loaded from a path.
        preprocess: the image pipeline the model saw in training.
        postprocess: probability map -> mask settings.
        networks: one network, or several whose probabilities are averaged (an ensemble), each
            with its own preprocessing.
        source: where it was loaded from.
        info: the checkpoint's description (model kwargs, metrics...), for reports.
        identity: the one identity every output names (:mod:`lungseg.models.identity`).
    """

    name: str
    preprocess: PreprocessConfig
    postprocess: PostprocessConfig
    networks: list[tuple[Any, PreprocessConfig]]
    source: str = ""
    info: dict[str, Any] | None = None
    identity: ModelIdentity | None = None

    def __post_init__(self) -> None:
        if self.identity is None:
            # Built by hand around networks of unknown weights: named, never mistaken for a
            # loaded model (whose digest is that of its weights file).
            self.identity = ModelIdentity(
                self.name,
                self.name,
                hashlib.sha256(f"unidentified:{self.source}".encode()).hexdigest(),
            )

    @property
    def size(self) -> int:
        return self.preprocess.size

    @property
    def convention(self) -> str:
        """The mask convention its masks follow (:data:`~lungseg.models.identity.CONVENTIONS`)."""
        return self.identity.convention if self.identity is not None else "unknown"

    @property
    def review_threshold(self) -> float:
        """Above this ``uncertain_fraction`` its masks are flagged for review: the threshold
        calibrated for this model and recorded in its checkpoint, else
        :data:`~lungseg.inference.quality.REVIEW_THRESHOLD`."""
        from lungseg.inference.quality import REVIEW_THRESHOLD

        return float((self.info or {}).get("review_threshold") or REVIEW_THRESHOLD)

    @property
    def on_gpu(self) -> bool:
        """Whether its networks run on a CUDA device."""
        return str(getattr(self.networks[0][0], "device", "cpu")).startswith("cuda")

    @property
    def torch_on_cpu(self) -> bool:
        """Whether a network runs on PyTorch on the CPU (whose thread count is a policy)."""
        nets = [getattr(net, "network", net) for net, _ in self.networks]  # under TTA too
        return any(isinstance(net, TorchNetwork) and not net.cuda for net in nets)

    @property
    def batch_size(self) -> int:
        """Images per forward pass: 64 on a GPU, which smaller batches leave idle; 8 on a CPU,
        where larger ones gain nothing (measured with ``lungseg segment``)."""
        return 64 if self.on_gpu else 8

    def preprocessed(self, image: np.ndarray) -> list[np.ndarray]:
        """``uint8[H, W]`` -> each network's input, ``uint8[S, S]`` after its preprocessing."""
        return [preprocess(image, config) for _, config in self.networks]

    def proba_preprocessed(self, inputs: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """:meth:`preprocessed` of N images -> probabilities ``float32[N, S, S]`` at the
        working size (an ensemble's averaged)."""
        total = np.zeros((len(inputs), self.size, self.size), np.float32)
        for i, (network, config) in enumerate(self.networks):
            batch = np.stack([x[i] for x in inputs]).astype(np.float32)
            prob = network(batch[:, None] / np.float32(255.0))
            if config.size != self.size:
                prob = np.stack([_resize_prob(p, (self.size, self.size)) for p in prob])
            total += prob
        return total / len(self.networks)

    def masks_from_proba(
        self, prob: np.ndarray, shapes: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        """Working-size probabilities ``float32[N, S, S]`` -> postprocessed ``bool`` masks, each
        resized to its image's ``(H, W)`` in ``shapes``."""
        masks = postprocess_batch(prob, self.postprocess)
        return [upscale_mask(m, shape) for m, shape in zip(masks, shapes, strict=True)]

    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """``float32[H, W]`` lung probability at the image's own resolution."""
        pixels = as_decoded(image).pixels
        prob = self.proba_preprocessed([self.preprocessed(pixels)])[0]
        return _resize_prob(prob, pixels.shape)

    def predict(self, image: ImageLike) -> np.ndarray:
        """``bool[H, W]`` lung mask at the image's own resolution: the mask of
        :func:`lungseg.inference.road.finish` without its measurements and encodings."""
        pixels = as_decoded(image).pixels
        prob = self.proba_preprocessed([self.preprocessed(pixels)])
        return self.masks_from_proba(prob, [pixels.shape])[0]

    def with_tta(self, views: Sequence[View] = DEFAULT_VIEWS) -> Segmenter:
        """This model with test-time augmentation over ``views`` (see
        :mod:`lungseg.inference.tta`)."""
        if (self.info or {}).get("tta"):
            return self
        networks = [(TTANetwork(network, views), config) for network, config in self.networks]
        info = {**(self.info or {}), "tta": [view.describe() for view in views]}
        identity = self.identity.with_tta() if self.identity is not None else None
        return dataclasses.replace(
            self, name=f"{self.name}+tta", networks=networks, info=info, identity=identity
        )


def upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``bool[S, S] -> bool[H, W]``: smooth resize (linear on 0/1, then > 0.5), not blocky."""
    if mask.shape == tuple(shape):
        return mask
    h, w = shape
    smooth = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return smooth > 0.5


def _resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if prob.shape == tuple(shape):
        return prob
    h, w = shape
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


def as_decoded(image: ImageLike) -> Decoded:
    if isinstance(image, Decoded):
        return image
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise LungsegError("image file not found", path)
        return decode_image(path.read_bytes(), str(path))
    if isinstance(image, bytes):
        return decode_image(image, "image bytes")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        # Python users hand over RGB(A) arrays (Pillow, imageio, matplotlib); OpenCV wants BGR(A).
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return to_gray8(arr, "image array")


def load_model(
    model: str | Path = "unet",
    device: str = "auto",
    postprocess: str | PostprocessConfig | None = None,
    threads: int | None = None,
    tta: bool = False,
    precision: str = "auto",
) -> Segmenter:
    """Load a model for segmentation.

    Args:
        model: a shipped model name (``unet``, ``fcn``, ``deeplabv3``, ``unet-fast``,
            ``ensemble``), a checkpoint file, a run directory (its ``best.pt``), or an exported
            ``.onnx`` file.
        device: ``auto``, ``cpu`` or ``cuda`` (PyTorch models).
        postprocess: override the recorded postprocessing (a preset name or a config).
        threads: ONNX Runtime intra-op threads.
        tta: average each prediction over the test-time augmentation views of
            :data:`lungseg.inference.tta.DEFAULT_VIEWS` (five forward passes per image).
        precision: PyTorch models' arithmetic (:data:`PRECISIONS`): ``auto`` (float16 autocast
            on CUDA, float32 on the CPU), ``float32``, ``float16`` or ``bfloat16``.
    """
    segmenter = _load(model, device, postprocess, threads, precision)
    return segmenter.with_tta() if tta else segmenter


def _load(
    model: str | Path,
    device: str,
    postprocess: str | PostprocessConfig | None,
    threads: int | None,
    precision: str,
) -> Segmenter:
    text = str(model)
    if text == "ensemble":
        members = [_load(name, device, postprocess, threads, precision) for name in ENSEMBLE_MODELS]
        return ensemble(members)
    (path,) = model_files(text)
    if path.suffix == ".onnx":
        network, meta = _load_onnx(path, threads)
    else:
        from lungseg.models.checkpoint import load_checkpoint, model_from_checkpoint

        meta = load_checkpoint(path)
        network = TorchNetwork(model_from_checkpoint(meta), resolve_device(device), precision)
    pre = from_dict(PreprocessConfig, meta["preprocess"], f"{path}:preprocess")
    post = _postprocess_config(postprocess, meta.get("postprocess"), path)
    info = {k: v for k, v in meta.items() if k not in _HEAVY_KEYS}
    # An ONNX export records the identity of the checkpoint it came from: the same weights,
    # the same identity. A shipped variant keeps its own name (unet-fast is a "unet").
    recorded = meta.get("identity") or {}
    digest = recorded.get("weights_sha256") or file_digest(path)
    shipped = shipped_name(path, digest) or ""
    if shipped in SHIPPED_REVIEW_THRESHOLDS:
        info.setdefault("review_threshold", SHIPPED_REVIEW_THRESHOLDS[shipped])
    name = shipped or recorded.get("name") or meta["model"]["name"]
    identity = ModelIdentity(
        name=name,
        architecture=meta["model"]["name"],
        digest=digest,
        convention=(
            recorded.get("convention")
            or meta.get("convention")
            or SHIPPED_CONVENTIONS.get(shipped, "unknown")
        ),
    )
    return Segmenter(name, pre, post, [(network, pre)], str(path), info, identity)


def model_files(model: str | Path) -> list[Path]:
    """The weights file(s) behind a model name or path, found without loading them: the one
    place that turns what a user typed into files.

    Raises:
        LungsegError: nothing there, named on one line with what is accepted.
    """
    text = str(model)
    if text == "ensemble":
        return [shipped_weights(name) for name in ENSEMBLE_MODELS]
    if text in SHIPPED_MODELS:
        return [shipped_weights(text)]
    path = Path(text)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise LungsegError(
            f"model not found; give a shipped model ({', '.join(SHIPPED_MODELS)}, ensemble), "
            "a checkpoint file, a run directory or an .onnx file",
            path,
        )
    return [path]


_HEAVY_KEYS = frozenset({"state_dict", "optimizer", "scheduler", "rng"})


def _postprocess_config(override, recorded, path) -> PostprocessConfig:
    if isinstance(override, PostprocessConfig):
        return override
    if isinstance(override, str):
        return PostprocessConfig.preset(override)
    if recorded:
        return from_dict(PostprocessConfig, recorded, f"{path}:postprocess")
    return PostprocessConfig.preset(DEFAULT_POSTPROCESS)


def ensemble(members: Sequence[Segmenter]) -> Segmenter:
    """Average the probabilities of several models; postprocess like the first member."""
    first = members[0]
    networks = [net for m in members for net in m.networks]
    info = {"members": [m.source for m in members]}
    conventions = {m.identity.convention for m in members if m.identity is not None}
    identity = ModelIdentity(
        name="ensemble",
        architecture="ensemble",
        digest=combined_digest([m.identity.digest for m in members if m.identity is not None]),
        convention=conventions.pop() if len(conventions) == 1 else "unknown",
    )
    return Segmenter(
        "ensemble", first.preprocess, first.postprocess, networks, "ensemble", info, identity
    )


ONNX_METADATA_KEY = "lungseg"


def _load_onnx(path: Path, threads: int | None) -> tuple[OnnxNetwork, dict]:
    network = OnnxNetwork(path, threads)
    props = network.session.get_modelmeta().custom_metadata_map
    if ONNX_METADATA_KEY not in props:
        raise LungsegError(
            "ONNX model has no lungseg metadata (export it with 'lungseg export')", path
        )
    return network, json.loads(props[ONNX_METADATA_KEY])
