"""``fulcrum env``: what a bug report needs — versions, CPU, threads, int8 instruction sets."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

from fulcrum.cli.common import add_json_argument, check_writable, write_json

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "env", help="versions, CPU, threads and int8 instruction sets, for bug reports"
    )
    add_json_argument(parser)
    parser.set_defaults(run=run)


def cpu_flags() -> list[str]:
    """The int8-relevant instruction sets this CPU reports (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return [f for f in INT8_FLAGS if f in flags]


def collect() -> dict[str, Any]:
    from fulcrum._version import describe
    from fulcrum.measure import environment
    from fulcrum.runtimes import default_threads

    info: dict[str, Any] = {"fulcrum": describe(), "platform": platform.platform()}
    info.update(environment(default_threads()))
    info["int8_instructions"] = cpu_flags()
    import onnxruntime
    import optuna
    import torch

    info["optuna"] = optuna.__version__
    info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def run(args: argparse.Namespace) -> int:
    check_writable(args.json)
    info = collect()
    if args.json is not None:
        write_json(args.json, info)
    else:
        width = max(map(len, info))
        for key, value in info.items():
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            print(f"{key:<{width}}  {text}")
    return 0
