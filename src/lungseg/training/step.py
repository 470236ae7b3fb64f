"""One training step and one validation pass, shaped so an accelerator is not kept waiting.

A training step is forward (bf16 autocast where enabled) -> loss -> backward -> Adam step. Every
step of a run has the same batch shape (:func:`epoch_batches` pads an epoch's order by wrapping
round), and what a step reports (the loss and the count of correct pixels) stays on the device:
nothing in the loop waits for the GPU (no ``.item()``, no copy to the host). On CUDA the whole
step is therefore captured once as a CUDA graph and replayed (:class:`TrainStep`): one launch
instead of the ~600 dispatcher calls of an eager U-Net step, whose host cost (7-8 ms) would
otherwise cap the U-Net near 2,000 images/s however fast the GPU. Capture needs Adam's state and
learning rate on the device (fused Adam with a tensor learning rate); a failed capture, a
OneCycle schedule (which changes Adam's betas every step) or a multi-process run fall back to
eager steps with one log line saying why.

:func:`validate` sums the validation loss, correct pixels and per-image Dice on the device; the
caller copies them to the host once per epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def epoch_batches(order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``order`` (a permutation of image indices) as ``[steps, batch]``: padded by wrapping round
    to whole batches, so every step has the same shape and every image is seen at least once.
    Fewer images than a batch make one batch of all of them."""
    batch = min(batch_size, len(order))
    steps = -(-len(order) // batch)
    pad = steps * batch - len(order)
    if pad:
        order = torch.cat([order, order[:pad]])
    return order.view(steps, batch)


class TrainStep:
    """``step(x, y) -> (loss, correct)``: one optimizer step on a fixed-shape batch.

    Args:
        net: the model to train (possibly DDP- or compile-wrapped).
        optimizer: its Adam.
        loss_fn: ``(logits, target) -> scalar``.
        autocast: ``autocast(cache_enabled) -> context manager`` for the forward pass.
        graphs: capture the step as a CUDA graph (CUDA only); ``False`` runs it eagerly.
        log: where to say that capture was not possible.

    ``x`` is ``float32[B, 1, H, W]`` in [0, 1], ``y`` the masks in {0, 1}; the results are
    device tensors: the mean loss over the batch and the number of correctly classified pixels.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Loss,
        autocast: Callable[[bool], Any],
        graphs: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.net, self.optimizer, self.loss_fn, self.autocast = net, optimizer, loss_fn, autocast
        self.graphs, self.log = graphs, log
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs and self._graph is None:
            self._capture(x, y)
        if self._graph is None:
            return self._eager(x, y)
        self._x.copy_(x)
        self._y.copy_(y)
        self._graph.replay()
        return self._loss, self._correct

    def _eager(self, x, y, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        # Under graph capture autocast must not cache casts across the capture boundary.
        with self.autocast(cache):
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            correct = ((logits > 0) == (y > 0.5)).sum()
        return loss.detach(), correct

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step as a CUDA graph on static input buffers.

        Capture runs a few warm-up steps first (as CUDA graphs require); the weights, buffers,
        optimizer state and random generators they changed are put back in place, so the run
        goes on from where it was.
        """
        self.graphs = False  # one attempt
        model_state = copy.deepcopy(self.net.state_dict())
        optim_state = copy.deepcopy(self.optimizer.state_dict()["state"])
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._record(x, y, model_state, optim_state)

    def _record(self, x, y, model_state, optim_state) -> None:
        try:
            self._x, self._y = x.clone(), y.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._eager(self._x, self._y, cache=False)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self._loss, self._correct = self._eager(self._x, self._y, cache=False)
            self._graph = graph
        except Exception as exc:  # noqa: BLE001 - any failure means: train eagerly
            self._graph = None
            self.log(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); eager steps")
        finally:
            self.net.load_state_dict(model_state)
            _restore_in_place(self.optimizer, optim_state)
            self.optimizer.zero_grad(set_to_none=False)


def _restore_in_place(optimizer: torch.optim.Optimizer, saved: dict[int, dict]) -> None:
    """Copy ``saved`` optimizer state back into the tensors the captured graph points to."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in saved.items():
        live = optimizer.state[params[index]]
        for key, value in state.items():
            if torch.is_tensor(value) and torch.is_tensor(live.get(key)):
                live[key].copy_(value)
            else:
                live[key] = value
    for param in params[len(saved) :]:
        optimizer.state.pop(param, None)  # state created only by the warm-up steps


#: What the device sums of an epoch hold, in order: :meth:`TrainStep`'s training sums (loss x
#: images, correct pixels, pixels) then :func:`validate`'s. The one place that knows the order.
TRAIN_SUMS = ("train_loss_sum", "train_correct", "train_pixels")
VAL_SUMS = ("val_loss_sum", "val_correct", "val_pixels", "val_dice_sum", "val_images")


def epoch_row(sums: Sequence[float], n_images: int) -> dict[str, float]:
    """The epoch's metrics from its sums (:data:`TRAIN_SUMS` + :data:`VAL_SUMS`, in order) and
    its number of training images."""
    named = dict(zip(TRAIN_SUMS + VAL_SUMS, sums, strict=True))
    return {
        "train_loss": named["train_loss_sum"] / n_images,
        "val_loss": named["val_loss_sum"] / named["val_images"],
        "train_acc": named["train_correct"] / named["train_pixels"],
        "val_acc": named["val_correct"] / named["val_pixels"],
        "val_dice": named["val_dice_sum"] / named["val_images"],
    }


@torch.no_grad()
def validate(
    net: nn.Module,
    loss_fn: Loss,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> torch.Tensor:
    """Validation sums on the device, ``float64[5]`` in the order of :data:`VAL_SUMS`: loss x
    images, correct pixels, pixels, sum of per-image Dice (``sigmoid(logits) > 0.5``; both masks
    empty: 1) and images.

    Runs in float32 even where training uses autocast, as inference does: the Dice that picks
    the best epoch is what the saved weights give.
    """
    net.eval()
    sums = torch.zeros(len(VAL_SUMS), dtype=torch.float64, device=device)
    for x, y in batches:
        n = x.shape[0]
        logits = net(x).float()
        pred, target = logits > 0, y > 0.5
        tp = (pred & target).sum((1, 2, 3))
        denominator = 2 * tp + (pred & ~target).sum((1, 2, 3)) + (~pred & target).sum((1, 2, 3))
        dice = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), 1.0)
        sums[0] += loss_fn(logits, y).double() * n
        sums[1] += (pred == target).sum()
        sums[2] += y.numel()
        sums[3] += dice.double().sum()
        sums[4] += n
    return sums
