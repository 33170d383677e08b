"""``fulcrum env``: what a bug report needs — versions, CPU, threads, int8 instruction sets."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from fulcrum.cli.common import add_json_argument, check_writable, write_json

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "env", help="versions, CPU, threads and int8 instruction sets, for bug reports"
    )
    add_json_argument(parser)
    parser.set_defaults(run=run)


def instruction_sets() -> list[str]:
    """The int8- and bf16-relevant instruction sets this CPU reports."""
    from fulcrum.runtimes.base import cpu_flags

    flags = cpu_flags() or frozenset()
    return [f for f in INT8_FLAGS if f in flags]


def collect() -> dict[str, Any]:
    from fulcrum import runtimes
    from fulcrum._version import describe
    from fulcrum.measure import environment
    from fulcrum.runtimes import default_threads

    info: dict[str, Any] = {"fulcrum": describe(), "platform": platform.platform()}
    info.update(environment(default_threads()))
    info["int8_instructions"] = instruction_sets()
    info["targets"] = [  # what --runtime takes here, and why a target is not offered
        name if why is None else f"{name} (not here: {why})"
        for name in runtimes.known()
        for why in [runtimes.unavailable(name)]
    ]
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
