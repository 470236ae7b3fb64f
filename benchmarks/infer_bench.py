"""Inference latency (batch 1) and throughput (best batch) per model, and the MONAI peer.

Each model is saved as a checkpoint and loaded back with :func:`lungseg.load_model`, the way a
user runs it; on the CPU it is also exported with :func:`lungseg.inference.segmenter.export_onnx`
and loaded from the ``.onnx`` file on ONNX Runtime with 2 intra-op threads. What is timed is the
network call the :class:`~lungseg.inference.segmenter.Segmenter` makes: preprocessed ``float32[B,
1, S, S]`` images in, probabilities ``float32[B, S, S]`` out as numpy (so a GPU run includes the
copy back). Weights are freshly initialised: speed does not depend on their values. MONAI's UNet
runs the plain PyTorch way and through the same ONNX Runtime settings, in the same run.

Two more figures per backend show what a user waits for with U-Net: ``predict`` on one
decoded 299x299 image (preprocessing, network, postprocessing, resizing the mask back), without
and with test-time augmentation (``--tta``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks import peer
from benchmarks.common import Context, Section, ratio_stats, release_memory, repeat

ORT_THREADS = 2
#: Models also timed as a static int8 ONNX model (lungseg export --int8).
INT8 = ("unet-fast",)
INT8_BACKEND = "ONNX Runtime int8"
BACKENDS = ("PyTorch", "ONNX Runtime", INT8_BACKEND)
GOAL_MS = 8.0  # U-Net ms/image, ONNX Runtime, batch 1, 2 threads
GOAL_PEER = 2.0  # x faster than MONAI's UNet


@dataclass(frozen=True)
class Plan:
    size: int
    batches: tuple[int, ...]
    latency_runs: int  # at least this many batch-1 calls...
    latency_seconds: float  # ...and on until this much time is timed
    throughput_runs: int
    throughput_seconds: float


QUICK = Plan(64, (1, 4), 2, 0.0, 1, 0.0)
CPU = Plan(256, (1, 8, 32), 10, 2.0, 3, 2.0)
CUDA = Plan(256, (1, 8, 32, 128), 50, 1.0, 10, 1.0)


def timed_models() -> dict[str, tuple[str, dict]]:
    """``name -> (architecture, constructor arguments)`` of every network timed.

    The registered architectures at their defaults (the study's networks), and each shipped
    model built otherwise (``unet-fast``; ``fcn (shipped)`` when the shipped FCN is deeper
    than the study's), with the architecture and arguments read from its shipped checkpoint.
    """
    from lungseg.models import list_models, model_info
    from lungseg.models.checkpoint import load_checkpoint
    from lungseg.models.shipped import SHIPPED_MODELS, shipped_weights

    models = {name: (name, {}) for name in list_models()}
    for name in SHIPPED_MODELS:
        spec = load_checkpoint(shipped_weights(name))["model"]
        kwargs = model_info(spec["name"]).changed(spec["kwargs"])
        if kwargs or spec["name"] != name:
            models[f"{name} (shipped)" if name in models else name] = (spec["name"], kwargs)
    return models


def run(ctx: Context) -> Section:
    plan = QUICK if ctx.quick else CUDA if ctx.device == "cuda" else CPU
    section = Section("infer", ctx)
    prepared = ctx.prepared(plan.size, limit=24 if ctx.quick else None)
    n = max(plan.batches)
    batch = (np.asarray(prepared.images[np.arange(n) % len(prepared.images)]) / 255.0).astype(
        np.float32
    )[:, None]
    saved_threads = torch.get_num_threads()
    threads = ctx.threads or ORT_THREADS
    if ctx.device == "cpu":
        torch.set_num_threads(threads)
    latency: dict[tuple[str, str], dict] = {}
    try:
        models = timed_models()
        for name, (arch, kwargs) in models.items():
            for backend, segmenter in _lungseg_networks(ctx, name, arch, kwargs, plan, threads):
                network = segmenter.networks[0][0]
                latency[name, backend] = _measure(ctx, section, name, backend, network, batch, plan)
                if name == "unet":
                    _end_to_end(ctx, section, backend, segmenter, plan)
                del segmenter, network
                release_memory()
        model, why = peer.create()
        if model is None:
            section.notes.append(why)
        else:
            for backend, network in _peer_networks(ctx, model, plan, threads):
                latency["peer", backend] = _measure(
                    ctx, section, f"{peer.NAME} (peer)", backend, network, batch, plan
                )
            for name, backend in itertools.product(("unet", "unet-fast"), BACKENDS):
                peer_backend = "ONNX Runtime" if backend == INT8_BACKEND else backend
                if (name, backend) in latency and ("peer", peer_backend) in latency:
                    section.add(
                        f"{name} speed-up over {peer.NAME}, batch-1 latency, {backend}",
                        ratio_stats(latency["peer", peer_backend], latency[name, backend]),
                        "x",
                        f"{peer.NAME} latency ({peer_backend}) / {name} latency, same run",
                    )
        if ctx.device == "cuda":
            _precision_agreement(ctx, section)
    finally:
        torch.set_num_threads(saved_threads)
    _goals(ctx, section, latency)
    section.notes += [
        f"Input: real images ({ctx.real_data()[1]}) preprocessed at {plan.size}x{plan.size} "
        "(preset seed), float32 in [0, 1].",
        "Latency: median milliseconds per batch-1 call after one warm-up call. Throughput: "
        f"images/s of the best batch among {', '.join(map(str, plan.batches))}.",
        (
            f"CPU: PyTorch with {threads} thread(s) (channels-last, as lungseg runs on the "
            f"CPU); ONNX Runtime CPUExecutionProvider with {threads} intra-op thread(s) "
            "(opset 17, exported by lungseg export; the int8 model by lungseg export --int8, "
            "static quantisation calibrated on 16 real X-rays)."
            if ctx.device == "cpu"
            else "GPU: PyTorch in lungseg's default precision there (float16 autocast), "
            "channels-last, eval mode, inference_mode, batches up from pinned memory; the "
            "result is copied back to the host each call, as Segmenter does."
        ),
    ]
    return section


def _precision_agreement(ctx: Context, section: Section) -> None:
    """How far the GPU's default float16 (and bfloat16) masks are from float32's, per shipped
    model, on real X-rays: mean and worst Dice between the masks at the working size."""
    import cv2

    from lungseg.inference.segmenter import load_model
    from lungseg.models.shipped import SHIPPED_MODELS

    folder, _ = ctx.real_data()
    files = sorted(folder.rglob("images/*.png"))[:64]
    images = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    for name in SHIPPED_MODELS:
        full = _working(load_model(name, device=ctx.device, precision="float32"), images)
        for precision in ("float16", "bfloat16"):
            other = load_model(name, device=ctx.device, precision=precision)
            differ = 100 * (1 - _dice(full > 0.5, _working(other, images) > 0.5))
            section.add(
                f"{name}: {precision} masks differ from float32's (1 - Dice; worst image "
                f"{differ.max():.3f} %)",
                [float(differ.mean())], "%", f"{len(images)} real X-rays at the working size",
            )  # fmt: skip


def _dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum((1, 2))
    total = a.sum((1, 2)) + b.sum((1, 2))
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def _checkpoint(ctx: Context, name: str, arch: str, kwargs: dict, size: int):
    from lungseg.core.config import to_dict
    from lungseg.data.preprocessing import PreprocessConfig
    from lungseg.inference.postprocessing import PostprocessConfig
    from lungseg.models import create_model
    from lungseg.models.checkpoint import plain_state_dict, save_checkpoint

    torch.manual_seed(0)
    model = create_model(arch, **kwargs)
    path = ctx.tmp / f"infer-{_slug(name)}.pt"
    save_checkpoint(
        path,
        {
            "model": {"name": arch, "kwargs": to_dict(model.init_kwargs)},
            "size": size,
            "preprocess": to_dict(PreprocessConfig.from_preset("seed", size)),
            "postprocess": to_dict(PostprocessConfig.preset("seed")),
            "state_dict": plain_state_dict(model),
        },
    )
    return path


def _lungseg_networks(ctx: Context, name: str, arch: str, kwargs: dict, plan: Plan, threads: int):
    """``(backend, network)`` for each backend measured on this device."""
    from lungseg.inference.export import export_onnx
    from lungseg.inference.segmenter import load_model

    ckpt = _checkpoint(ctx, name, arch, kwargs, plan.size)
    yield "PyTorch", load_model(ckpt, device=ctx.device)
    if ctx.device == "cpu":
        onnx = export_onnx(ckpt, ctx.tmp / f"infer-{_slug(name)}.onnx")
        yield "ONNX Runtime", load_model(onnx, threads=threads)
        if name in INT8:
            src, _ = ctx.real_data()
            calibration = sorted(src.glob("*/images/*.png"))[:16]
            int8 = export_onnx(
                ckpt, ctx.tmp / f"infer-{_slug(name)}-int8.onnx", int8_calibration=calibration
            )
            yield INT8_BACKEND, load_model(int8, threads=threads)


def _slug(name: str) -> str:
    """``fcn (shipped)`` -> ``fcn-shipped``, for file names."""
    return "-".join(name.replace("(", "").replace(")", "").split())


def _peer_networks(ctx: Context, model, plan: Plan, threads: int):
    yield "PyTorch", peer.PlainNetwork(model, ctx.device)
    if ctx.device == "cpu":
        path = peer.export_onnx(model, ctx.tmp / "infer-peer.onnx", plan.size)
        yield "ONNX Runtime", peer.onnx_network(path, threads)


def _measure(ctx, section, name, backend, network, batch, plan) -> dict:
    """Batch-1 latency and best-batch throughput of ``network``; returns the latency figure."""
    times = repeat(
        lambda: network(batch[:1]),
        repeats=plan.latency_runs,
        min_seconds=plan.latency_seconds,
        max_repeats=1000,
    )
    latency = section.add(
        f"{name}: latency, batch 1, {backend}", [t * 1000 for t in times], "ms/image"
    )
    best = None
    for size in plan.batches:
        times = repeat(
            lambda size=size: network(batch[:size]),
            repeats=plan.throughput_runs,
            min_seconds=plan.throughput_seconds,
            max_repeats=200,
        )
        speed = [size / t for t in times]
        if best is None or np.median(speed) > np.median(best[1]):
            best = (size, speed)
    assert best is not None
    section.add(
        f"{name}: throughput, best batch, {backend}",
        best[1],
        "images/s",
        f"best batch {best[0]} of {', '.join(map(str, plan.batches))}",
    )
    return latency


def _end_to_end(ctx: Context, section: Section, backend: str, segmenter, plan: Plan) -> None:
    """U-Net ``predict`` on one decoded original-size image, what a user waits for."""
    from lungseg.data.io import decode_image

    src, _ = ctx.real_data()
    image_file = sorted(src.glob("*/images/*.png"))[0]
    pixels = decode_image(image_file.read_bytes(), str(image_file)).pixels
    times = repeat(
        lambda: segmenter.predict(pixels),
        repeats=plan.latency_runs,
        min_seconds=plan.latency_seconds,
        max_repeats=500,
    )
    h, w = pixels.shape
    section.add(
        f"unet: end-to-end predict, 1 image, {backend}",
        [t * 1000 for t in times],
        "ms/image",
        f"{w}x{h} uint8 in, mask out: preprocess + network + postprocess + resize",
    )
    augmented = segmenter.with_tta()
    times = repeat(
        lambda: augmented.predict(pixels),
        repeats=plan.latency_runs,
        min_seconds=plan.latency_seconds,
        max_repeats=200,
    )
    section.add(
        f"unet: end-to-end predict with --tta, 1 image, {backend}",
        [t * 1000 for t in times],
        "ms/image",
        f"as above, averaged over {len(augmented.networks[0][0].views)} test-time views",
    )


def _goals(ctx: Context, section: Section, latency: dict) -> None:
    """The latency goals, judged for the accurate U-Net and for the shipped fast variant."""
    judged = (
        ("unet", "ONNX Runtime", "U-Net"),
        ("unet-fast", "ONNX Runtime", "U-Net fast variant (unet-fast)"),
        ("unet-fast", INT8_BACKEND, "U-Net fast variant, int8 (unet-fast, export --int8)"),
    )
    for name, backend, what in judged:
        ms_goal = f"{what} CPU inference <= 8 ms/image, {backend}, batch 1, 2 threads"
        peer_goal = f"{what} CPU inference >= 2x faster than {peer.NAME} (ONNX Runtime, batch 1)"
        if ctx.device != "cpu":
            for goal in (ms_goal, peer_goal):
                section.not_judged(goal, "a CPU goal; judged on the CPU run")
            continue
        section.goal(ms_goal, latency[name, backend]["median"], "<=", GOAL_MS, "ms/image")
        if ("peer", "ONNX Runtime") in latency:
            times = ratio_stats(latency["peer", "ONNX Runtime"], latency[name, backend])
            section.goal(peer_goal, times["median"], ">=", GOAL_PEER, "x")
        else:
            section.not_judged(peer_goal, "MONAI absent on this machine")


def _working(segmenter, images):
    """Working-size probabilities of decoded ``images``."""
    return segmenter.proba_preprocessed([segmenter.preprocessed(im) for im in images])
