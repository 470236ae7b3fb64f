"""``python -m benchmarks``: run the benchmarks, print them and rewrite BENCHMARKS.md.

Usage::

    python -m benchmarks                       # every CPU benchmark (< 15 min on 2 cores)
    python -m benchmarks --device cuda         # on a GPU machine: train, infer, scaling
    python -m benchmarks --only prepare,infer  # some of them; the others' figures are kept
    python -m benchmarks --only segment        # archive segmentation (about 5 min on 2 cores)
    python -m benchmarks --quick               # seconds; smoke test into a temporary folder
    python -m benchmarks --render              # only rewrite BENCHMARKS.md from the records
    python -m benchmarks --only train --baseline REF  # loop overheads before (REF) and after

Each benchmark's section is stored in ``RECORDS/<device>.json`` (default
``benchmarks/records``), replacing that device's previous section of the same name only, and
BENCHMARKS.md is rendered from every record present: CPU figures from one machine and GPU figures
from another live side by side.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import (
    RECORDS,
    REPO,
    SHARED_DATA,
    TITLES,
    Context,
    load_records,
    print_section,
    render,
    save_section,
)

#: Benchmarks run by default on each device (preparation is CPU work: name it to run it on a
#: GPU machine's host).
DEFAULTS = {
    "cpu": ("prepare", "train", "infer", "scaling", "segment", "serve", "cli", "node"),
    "cuda": ("train", "infer", "scaling"),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and single runs (seconds): checks the code, measures nothing; writes "
        "to a temporary folder unless --out/--records are given",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated benchmarks to run: {', '.join(TITLES)}"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: only rewrite the markdown from the records (e.g. after copying in "
        "a GPU machine's cuda.json)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="a git commit whose training-loop overheads are measured beside this checkout's "
        "(train benchmark), e.g. the commit before a change to the loop",
    )
    parser.add_argument("--out", type=Path, help="markdown to rewrite (default BENCHMARKS.md)")
    parser.add_argument(
        "--records",
        "--results-dir",
        dest="records",
        type=Path,
        help=f"folder of per-device JSON records (default {RECORDS.relative_to(REPO)})",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED_DATA,
        help="shared data folder holding covid-cxr/ (falls back to examples/ when absent)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(DEFAULTS[args.device])
    unknown = [n for n in names if n not in TITLES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(TITLES)}")
    args.names = [] if args.render else [n for n in TITLES if n in names]
    if args.quick and args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="lungseg-bench-")) / "BENCHMARKS.md"
    args.out = args.out or REPO / "BENCHMARKS.md"
    if args.records is None:
        args.records = args.out.parent / "records" if args.quick else RECORDS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and args.names:
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device is available here", file=sys.stderr)
            return 2
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    tmp = Path(tempfile.mkdtemp(prefix="lungseg-bench-work-"))
    shared = args.data if (args.data / "covid-cxr").is_dir() else None
    ctx = Context(
        args.quick, args.device, tmp, shared, command, threads=1 if args.quick else None,
        baseline=args.baseline,
    )  # fmt: skip
    if ctx.threads:
        import torch

        torch.set_num_threads(ctx.threads)
    failed = []
    try:
        for name in args.names:
            print(f"== {TITLES[name]} ({args.device})", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(f"benchmarks.{name}_bench")
                section = module.run(ctx).to_dict()
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            save_section(args.records, args.device, section)
            print_section(section)
            print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = load_records(args.records)
    try:
        shown = args.records.resolve().relative_to(REPO)
    except ValueError:
        shown = args.records
    args.out.write_text(render(records, str(shown)), encoding="utf-8")
    print(f"\nwrote {args.out} (records in {args.records})")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
