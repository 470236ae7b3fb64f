"""The training step and loop as an accelerator needs them, checked on the CPU: fixed batch
shapes, no host sync inside the step loop, one compile per model, Adam state loaded to the host,
scoped backend flags, the graph-capture fallback, the background writer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

import lungseg.training.engine as engine
import lungseg.training.rundir as rundir
from lungseg.data.cache import prepare
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.data.settings import PrepareConfig
from lungseg.training import TrainConfig, load_checkpoint, train
from lungseg.training.step import TrainStep, epoch_batches, validate

#: 12 examples at 32x32: 6 training images, batch 4 -> a short last batch without padding.
SETTINGS = dict(model="fcn", n_filters=4, batch_size=4, threads=1, device="cpu")


@pytest.fixture(scope="module")
def cache(examples_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    config = PrepareConfig(PreprocessConfig.from_preset("seed", 32), 0.25, 0.25, 0)
    prepare(examples_dir, out, config, workers=1, progress=False)
    return out


def test_epoch_batches_are_whole_and_cover_every_image():
    order = torch.randperm(10)
    batches = epoch_batches(order, 4)
    assert batches.shape == (3, 4)
    assert set(batches.flatten().tolist()) == set(range(10))
    assert batches.flatten()[:10].tolist() == order.tolist()  # padded by wrapping round
    assert epoch_batches(order, 16).shape == (1, 10)  # fewer images than a batch: one batch


def _forward_inputs(model_forward_calls: list, run):
    """Record the input shape and training mode of every model forward call during ``run``."""

    def hook(module, args):
        model_forward_calls.append((tuple(args[0].shape), module.training))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: hook(m, a) if m.__class__.__name__ == "FCN" else None
    )
    try:
        return run()
    finally:
        handle.remove()


def test_every_training_step_has_the_same_shape_and_runs_in_training_mode(cache, tmp_path):
    calls: list = []
    _forward_inputs(
        calls,
        lambda: train(TrainConfig(epochs=2, **SETTINGS), cache, tmp_path / "r", progress=False),
    )
    training = [shape for shape, mode in calls if mode]
    assert training and set(training) == {(4, 1, 32, 32)}  # 6 images -> 2 full batches of 4
    assert len(training) == 4  # 2 epochs x 2 steps: the second epoch trains too, not in eval
    validation = [shape for shape, mode in calls if not mode]
    assert len(validation) == 2  # one eval-mode pass per epoch, over the validation images


def test_the_step_loop_never_waits_for_the_device(cache, tmp_path, monkeypatch):
    """No .item(), float(tensor), .cpu(), .tolist(), .numpy() inside an epoch's steps: on a GPU
    each would stall the loop until the device catches up."""
    inside = threading.local()
    original = engine._Run._train_epoch

    def guarded(self, *args, **kwargs):
        inside.on = True
        try:
            return original(self, *args, **kwargs)
        finally:
            inside.on = False

    def forbid(name):
        real = getattr(torch.Tensor, name)

        def call(self, *args, **kwargs):
            if getattr(inside, "on", False):
                raise AssertionError(f"Tensor.{name}() inside the step loop")
            return real(self, *args, **kwargs)

        return call

    monkeypatch.setattr(engine._Run, "_train_epoch", guarded)
    for name in ("item", "__float__", "__int__", "__bool__", "cpu", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    train(TrainConfig(epochs=2, **SETTINGS), cache, tmp_path / "r", progress=False)


def test_torch_compile_compiles_each_model_once(cache, tmp_path, monkeypatch):
    """Fixed shapes, dynamic=False and an eager validation: one graph for the whole run (the
    old loop recompiled for the short last batch, for validation's no-grad mode and for the
    short validation batch)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(engine, "COMPILE_BACKEND", "eager")  # same tracing, no C++ build
    torch._dynamo.reset()
    counters.clear()
    train(TrainConfig(epochs=3, compile=True, **SETTINGS), cache, tmp_path / "r", progress=False)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])


def test_resume_loads_the_checkpoint_to_the_host(cache, tmp_path, monkeypatch):
    """map_location='cpu' whatever the run's device: on CUDA, Adam's step counters would
    otherwise land on the GPU and be read back every step."""
    out = tmp_path / "r"
    train(TrainConfig(epochs=1, **SETTINGS), cache, out, progress=False)
    seen = []
    real = rundir.load_checkpoint
    monkeypatch.setattr(
        rundir, "load_checkpoint", lambda p, map_location: seen.append(map_location) or real(p)
    )
    train(TrainConfig(epochs=2, **SETTINGS), cache, out, resume=True, progress=False)
    assert seen == ["cpu"]


def test_backend_flags_are_scoped():
    from lungseg.core.devices import backend_flags

    flags = torch.backends.cudnn
    before = (flags.benchmark, torch.backends.cuda.matmul.allow_tf32)
    flags.benchmark = False
    try:
        with backend_flags("cuda:0"):
            assert flags.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert flags.benchmark is False
        with backend_flags("cpu"):
            assert flags.benchmark is False
    finally:
        flags.benchmark, torch.backends.cuda.matmul.allow_tf32 = before


class _FakeStream:
    def wait_stream(self, other):
        pass


def test_a_failed_capture_trains_eagerly_with_the_state_put_back(monkeypatch):
    """Capture runs warm-up steps; when it then fails, the weights and Adam's state are those
    before the warm-up, so the run is the one an eager step would have made."""
    import contextlib

    from lungseg.models import create_model
    from lungseg.training.losses import make_loss

    def build():
        torch.manual_seed(0)
        model = create_model("fcn", n_filters=4)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, opt

    x = torch.rand(4, 1, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.5).float()
    autocast = lambda cache: contextlib.nullcontext()  # noqa: E731
    reference, ref_opt = build()
    eager = TrainStep(reference, ref_opt, make_loss("bce"), autocast)
    for _ in range(2):
        eager(x, y)

    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())

    def no_graph():
        raise RuntimeError("capture not supported here")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", no_graph)
    model, opt = build()
    logged: list[str] = []
    step = TrainStep(model, opt, make_loss("bce"), autocast, graphs=True, log=logged.append)
    eager_once = TrainStep(model, opt, make_loss("bce"), autocast)
    eager_once(x, y)  # a first step, so Adam has state for the capture to put back
    step(x, y)
    assert logged and "capture failed" in logged[0] and "eager" in logged[0]
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_validation_dice_matches_the_metrics_module():
    from lungseg.evaluation.metrics import confusion, dice_score

    torch.manual_seed(1)
    logits = torch.randn(5, 1, 16, 16)
    masks = (torch.rand(5, 1, 16, 16) > 0.6).float()
    masks[0] = 0  # empty target
    logits[0] = -1  # and an empty prediction: Dice 1

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    sums = validate(Fixed(), torch.nn.BCEWithLogitsLoss(), [(torch.zeros(5, 1, 16, 16), masks)],
                    torch.device("cpu"))  # fmt: skip
    expected = dice_score(confusion((logits > 0)[:, 0].numpy(), masks[:, 0].numpy() > 0.5))
    assert sums[3].item() == pytest.approx(float(expected.sum()))
    assert sums[4].item() == 5


def test_the_writer_hands_a_failed_write_to_the_training_thread(cache, tmp_path, monkeypatch):
    import lungseg.training.writer as writer

    def full_disk(path, ckpt):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(writer, "save_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(TrainConfig(epochs=3, **SETTINGS), cache, tmp_path / "r", progress=False)


def test_curves_are_drawn_at_the_end_not_every_epoch(cache, tmp_path, monkeypatch):
    import lungseg.evaluation.plots as plots

    drawn = []
    real = plots.save_training_curves
    monkeypatch.setattr(
        plots, "save_training_curves", lambda *a, **k: drawn.append(a) or real(*a, **k)
    )
    out = tmp_path / "r"
    train(TrainConfig(epochs=3, **SETTINGS), cache, out, progress=False)
    assert len(drawn) == 1 and len(drawn[0][0]) == 3  # once, with all three epochs
    assert (out / "curves.png").is_file()
    assert load_checkpoint(out / "last.pt")["epoch"] == 3
