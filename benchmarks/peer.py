"""The peer: MONAI's UNet, trained and run the plain PyTorch way, in the same run as lungseg.

``monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=1,
channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)``: five levels from 16
to 256 channels like lungseg's U-Net (``n_filters=16``), with residual units. It is trained with a
plain loop (Adam, ``BCEWithLogitsLoss``, float32, contiguous tensors, PyTorch's default backend
flags, no augmentation) and run for inference with ``torch.inference_mode`` and a sigmoid,
returning numpy probabilities as lungseg's networks do.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

NAME = "MONAI UNet"


def create() -> tuple[nn.Module | None, str]:
    """The peer model, or ``None`` and why (MONAI is an optional, test-only dependency)."""
    try:
        from monai.networks.nets import UNet
    except ImportError as exc:
        return None, f"MONAI is not installed here ({exc}); the peer was skipped"
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )
    return model, ""


def default_backend():
    """PyTorch's default cuDNN/TF32 flags inside, whatever the process had."""
    from lungseg.core.devices import cuda_flags

    return cuda_flags(benchmark=False, matmul_tf32=False, cudnn_tf32=True)


class PlainTrainer:
    """A plain training loop over uint8 ``images``/``masks`` ``[N, S, S]`` already on the device."""

    def __init__(self, model: nn.Module, device: str, batch_size: int) -> None:
        self.model = model.to(device).train()
        self.device = device
        self.batch_size = batch_size
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def epoch(self, images: torch.Tensor, masks: torch.Tensor, steps: int) -> int:
        """``steps`` optimizer steps over a shuffled order; returns the images seen."""
        order = torch.randperm(len(images), device=images.device)
        seen = 0
        for step in range(steps):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = images[idx].unsqueeze(1).float().div_(255)
            y = masks[idx].unsqueeze(1).float()
            loss = self.loss_fn(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            seen += len(idx)
        return seen


class PlainNetwork:
    """Plain PyTorch inference: ``float32[B, 1, S, S]`` -> probabilities ``float32[B, S, S]``."""

    def __init__(self, model: nn.Module, device: str) -> None:
        self.model = model.to(device).eval()
        self.device = device

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            return torch.sigmoid(self.model(x))[:, 0].cpu().numpy()


def export_onnx(model: nn.Module, path: Path, size: int) -> Path:
    """The peer in ONNX (opset 17, dynamic batch), exported as lungseg exports its models."""
    model = model.cpu().eval()
    with warnings.catch_warnings():
        # MONAI's InstanceNorm keeps no running statistics, so its train and eval modes compute
        # the same thing; the exporter warns about the mode all the same.
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, size, size),),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def onnx_network(path: Path, threads: int) -> Any:
    """An ONNX Runtime session with the same wrapper and settings as lungseg's."""
    from lungseg.inference.segmenter import OnnxNetwork

    return OnnxNetwork(path, threads)
