"""Speed and scale benchmarks of lungseg, side by side with a peer (MONAI's UNet).

``python -m benchmarks [--quick] [--only NAME,...] [--device cpu|cuda] [--out BENCHMARKS.md]``
runs them, prints each figure and rewrites ``BENCHMARKS.md`` from the records of every device
(``benchmarks/records/<device>.json``), so CPU and GPU figures, measured on different machines,
live side by side. See :mod:`benchmarks.__main__`.

Benchmarks (one module each): ``prepare`` (decoding + preprocessing throughput),
``train`` (training throughput, memory, epoch time, MONAI peer), ``infer`` (latency and
throughput with PyTorch and ONNX Runtime, MONAI peer) and ``scaling`` (1 vs 2 processes under
torchrun). :mod:`benchmarks.common` holds timing, statistics, machine description, goals and
the markdown writer.
"""
