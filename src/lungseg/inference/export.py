"""ONNX export: ``lungseg export`` and :func:`export_onnx`.

The exported file carries the model description, preprocessing and postprocessing as metadata
(:data:`~lungseg.inference.segmenter.ONNX_METADATA_KEY`), so ``load_model("model.onnx")`` needs
nothing else and runs it on ONNX Runtime. ``int8_calibration`` quantises it statically (ONNX
Runtime, QDQ) with ranges measured on real X-rays run through the model's own preprocessing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.core.config import to_dict
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write_bytes
from lungseg.data.preprocessing import preprocess
from lungseg.inference.segmenter import (
    ONNX_METADATA_KEY,
    ImageLike,
    Segmenter,
    TorchNetwork,
    as_decoded,
    load_model,
)

#: The ONNX opset exports use unless told otherwise (``lungseg export --opset``, a server's cache).
ONNX_OPSET = 17


def export_onnx(
    model: str | Path,
    out: str | Path,
    opset: int = ONNX_OPSET,
    int8_calibration: Sequence[ImageLike] | None = None,
) -> Path:
    """Export a checkpoint or shipped model to ONNX with a dynamic batch axis.

    The file carries the model description, preprocessing and postprocessing as metadata, so
    ``load_model("model.onnx")`` needs nothing else. Output: logits ``float32[B, 1, S, S]``.

    Args:
        model: a shipped model name, checkpoint or run directory.
        out: the ``.onnx`` file to write.
        opset: ONNX opset.
        int8_calibration: X-rays (paths, bytes or arrays) to calibrate a static int8
            quantisation with ONNX Runtime (weights int8, activations uint8, QDQ format, ranges
            from these images after the model's own preprocessing). ``None``: float32.
    """
    if int8_calibration is not None:
        return _export_int8(model, Path(out), opset, int8_calibration)
    import io

    import onnx
    import torch

    segmenter = load_model(model, device="cpu")
    if len(segmenter.networks) != 1 or not isinstance(segmenter.networks[0][0], TorchNetwork):
        raise LungsegError("export needs a single PyTorch model (not an ensemble or ONNX file)")
    net = segmenter.networks[0][0].model.to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 1, segmenter.size, segmenter.size)
    buffer = io.BytesIO()  # exported in memory: the file appears whole, or not at all
    with warnings.catch_warnings():
        # The models' input checks (channels, size divisible by 16) become constants in the
        # trace, which is right: the exported graph takes the one working size it was made for.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            net,
            (example,),
            buffer,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        "model": segmenter.info["model"] if segmenter.info else {"name": segmenter.name},
        "size": segmenter.size,
        "preprocess": to_dict(segmenter.preprocess),
        "postprocess": to_dict(segmenter.postprocess),
        "source": segmenter.source,
        "identity": _identity(segmenter),
        # the model's own (calibrated) threshold: without it the export flagged by the default
        "review_threshold": segmenter.review_threshold,
    }
    return _save(proto, meta, Path(out))


def _save(proto: Any, meta: dict[str, Any], out: Path) -> Path:
    """Write the model with ``meta`` as its lungseg metadata, atomically."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(meta)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def evenly_spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` (at least one) of ``items``, evenly spread over them: a calibration set
    that covers a sorted folder or a split instead of its first files."""
    count = min(max(1, n), len(items))
    step = len(items) / count if count else 1.0
    return [items[int(i * step)] for i in range(count)]


def _export_int8(
    model: str | Path, out: Path, opset: int, calibration: Sequence[ImageLike]
) -> Path:
    """float32 export -> ONNX Runtime pre-processing (BN folding, shapes) -> static int8."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = list(calibration)
    if not images:
        raise LungsegError("int8 export needs at least one calibration image")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", opset)
        segmenter = load_model(fp32)  # the float32 file's preprocessing and metadata
        pre = segmenter.preprocess
        inputs = [
            preprocess(as_decoded(im).pixels, pre).astype(np.float32)[None, None] / 255.0
            for im in images
        ]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(inputs)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.batches, None)
                return None if batch is None else {"image": batch}

        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            # 7-bit weights: on x86 CPUs without VNNI (AVX2 only) ONNX Runtime's uint8 x int8
            # kernels saturate their 16-bit sums, which cost unet-fast 0.004 validation Dice
            # (0.9528 -> 0.9485); with them 0.9522, as on CPUs with VNNI.
            reduce_range=True,
        )
        proto = onnx.load(str(quantized))
    meta = dict(segmenter.info or {})
    meta["identity"] = _identity(segmenter)
    meta["quantization"] = {
        "type": "int8 static (ONNX Runtime): int8 weights (7-bit range), uint8 activations, "
        "QDQ, per tensor",
        "calibration_images": len(inputs),
    }
    return _save(proto, meta, out)


def _identity(segmenter: Segmenter) -> dict[str, Any]:
    """The checkpoint's identity, recorded so that the export is named as its checkpoint is
    (:mod:`lungseg.models.identity`): the same name, weights digest and convention."""
    identity = segmenter.identity.to_dict()
    return {k: identity[k] for k in ("name", "weights_sha256", "convention")}
