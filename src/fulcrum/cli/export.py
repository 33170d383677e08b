"""``fulcrum export RUN_DIR``: write the sweet spot (or a trial) and verify it on validation data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum.cli.common import add_json_argument, check_writable, positive_int, write_json

if TYPE_CHECKING:
    from fulcrum.runfolder import ExportRecord


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "export", help="export the sweet spot (or --trial N), verified against the model"
    )
    parser.add_argument(
        "run_dir", type=Path, help="a folder written by `fulcrum search` or `fulcrum compress`"
    )
    parser.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "safetensors", "pt2", "hf", "openvino"],
        help="onnx: the deployed graph (default); hf: that graph in Hugging Face's layout with "
        "config.json and the tokenizer (transformers models); openvino: that graph as OpenVINO "
        "IR; safetensors or pt2: the PyTorch model",
    )
    parser.add_argument(
        "--trial", type=int, default=None, help="export this trial instead of the sweet spot"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder to write (default: RUN_DIR/export/FORMAT)"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite files already in the output folder"
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="export a candidate the run recorded no metric for (a pruned trial), unchecked",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="intra-op threads while checking"
    )
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fulcrum.export import export  # (loads torch: `fulcrum --help` stays fast)

    check_writable(args.json)
    record = export(
        args.run_dir,
        fmt=args.format,
        trial=args.trial,
        out=args.out,
        force=args.force,
        check=args.check,
    )
    print(
        f"exported {', '.join(record.files)} to {args.out or args.run_dir / 'export' / args.format}"
    )
    describe(record)
    write_json(args.json, record.model_dump(mode="json"))
    return 0


def describe(record: ExportRecord) -> None:
    """What the export holds and what was checked, in a few lines."""
    p = record.parity
    print(f"it holds {record.contains}")
    metric = p.metric
    if metric is not None and metric.checked and metric.recorded is not None:
        print(
            f"re-evaluated on the validation split: {metric.name} {metric.exported:.4f}, "
            f"as recorded ({metric.recorded:.4f}; tolerance {metric.tolerance})"
        )
    elif metric is not None:
        print(
            f"{metric.name} on the validation split: {metric.exported} (not checked against the run)"
        )
    if p.max_abs is not None:
        print(
            f"against the float model on {p.samples} validation samples: max abs difference "
            f"{p.max_abs:.3g}, max relative {p.max_rel:.3g} (tolerance atol "
            f"{record.tolerance['atol']}, rtol {record.tolerance['rtol']})"
        )
    if p.vs_float_max_abs is not None:
        print(f"deviation from the float model: max abs {p.vs_float_max_abs:.3g}")
