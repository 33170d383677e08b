"""``fulcrum export RUN_DIR``: write the sweet spot (or a trial) and verify it on validation data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fulcrum.cli.common import positive_int


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "export", help="export the sweet spot (or --trial N), verified against the model"
    )
    parser.add_argument(
        "run_dir", type=Path, help="a folder written by `fulcrum search` or `fulcrum compress`"
    )
    parser.add_argument("--format", default="onnx", choices=["onnx", "safetensors", "pt2"])
    parser.add_argument(
        "--trial", type=int, default=None, help="export this trial instead of the sweet spot"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder to write (default: RUN_DIR/export/FORMAT)"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite files already in the output folder"
    )
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.export import export

    record = export(args.run_dir, fmt=args.format, trial=args.trial, out=args.out, force=args.force)
    p = record["parity"]
    print(f"exported {', '.join(record['files'])} to {record['out']}")
    metric = p.get("metric", {})
    if metric.get("recorded") is not None:
        print(
            f"re-evaluated on the validation split: {metric['name']} {metric['exported']:.4f}, "
            f"as recorded ({metric['recorded']:.4f}; tolerance {metric['tolerance']})"
        )
    if "max_abs" in p:
        print(
            f"against the float model on {p['samples']} validation samples: max abs difference "
            f"{p['max_abs']:.3g}, max relative {p['max_rel']:.3g} (tolerance atol "
            f"{record['tolerance']['atol']}, rtol {record['tolerance']['rtol']})"
        )
    if "vs_float_max_abs" in p:
        print(f"deviation from the float model: max abs {p['vs_float_max_abs']:.3g}")
    return 0
