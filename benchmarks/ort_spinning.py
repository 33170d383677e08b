"""ONNX Runtime's thread spinning: Fulcrum's sessions (spin within a run, stop when it returns)
against sessions that never spin, and PyTorch timed in the same rounds.

Worker threads that keep spinning after a run steal a core from whatever is timed next, so
Fulcrum's sessions must not leave them spinning; this measures what each way of stopping them
costs. For each ``--rounds``, both settings are timed in turn, each as one interleaved group of
the fp32 graph, its int8 graph (``--recipe``) and the PyTorch model, at batch 1 on the
workload's example inputs. Prints the medians and writes
benchmarks/results/ort-spinning-<workload>.json.

    .venv/bin/python benchmarks/ort_spinning.py [--workload digits] [--recipe quantize] [--rounds 8]
    .venv/bin/python benchmarks/ort_spinning.py --workload minilm --recipe "fuse > quantize:int8-dynamic,embeddings=int4"
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fulcrum.compression import compress
from fulcrum.measure import environment
from fulcrum.runtimes import default_threads, exported_bytes, with_batch
from fulcrum.timing import time_interleaved
from fulcrum.workloads import load

SETTINGS = {
    "never spin": {"session.intra_op.allow_spinning": "0"},
    "stop when a run returns (fulcrum)": {"session.force_spinning_stop": "1"},
}


def session(graph: bytes, threads: int, entries: dict[str, str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--recipe", default="quantize")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    workload = load(args.workload)
    model = workload.model.eval()
    inputs = with_batch(workload.example_inputs, 1)
    graphs = {
        "fp32": exported_bytes(model, inputs),
        "int8": compress(model, args.recipe, workload).onnx,
    }

    def torch_call() -> object:
        with torch.inference_mode():
            return model(*inputs)

    medians: dict[str, dict[str, list[float]]] = {s: {} for s in SETTINGS}
    for _ in range(args.rounds):
        for name, entries in SETTINGS.items():
            calls = {}
            for label, graph in graphs.items():
                ort_session = session(graph, threads, entries)
                feed = {
                    i.name: x.numpy() for i, x in zip(ort_session.get_inputs(), inputs, strict=True)
                }
                calls[label] = lambda s=ort_session, f=feed: s.run(None, f)
            calls["torch (same rounds)"] = torch_call
            for label, seconds in time_interleaved(calls, seconds=args.seconds).items():
                medians[name].setdefault(label, []).append(statistics.median(seconds) * 1e3)
    rows = []
    for name, per_model in medians.items():
        for label, values in per_model.items():
            rows.append(
                {
                    "setting": name,
                    "model": label,
                    "median_ms": round(statistics.median(values), 4),
                    "round_medians_ms": [round(v, 4) for v in values],
                }
            )
            print(f"{name:<36} {label:<20} {statistics.median(values):9.3f} ms")
    result = {
        "benchmark": "ort_spinning",
        "workload": args.workload,
        "recipe": args.recipe,
        "batch_size": 1,
        "threads": threads,
        "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "environment": environment(threads),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ort-spinning-{args.workload}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
