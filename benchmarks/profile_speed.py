"""How long counting takes: `profile(..., latency=False)` of BERT-base (sequence 128) and of the
real all-MiniLM-L6-v2 with its attention mask (counted in one forward pass), median of 3.

    .venv/bin/python benchmarks/profile_speed.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from fulcrum.measure import environment, profile
from fulcrum.runtimes import default_threads
from fulcrum.workloads import load
from fulcrum.workloads.text import transformers_quietly


def timed(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, object]:
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        result = profile(model, inputs, latency=False)
        seconds.append(time.perf_counter() - start)
    return {
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds": [round(s, 3) for s in seconds],
        "params": result.params_total,
        "macs": result.macs,
        "counted_on": result.counted_on,
    }


def main() -> None:
    with transformers_quietly() as transformers:
        bert = transformers.BertModel(transformers.BertConfig()).eval()
    rows = {"bert-base, sequence 128": timed(bert, (torch.randint(0, 30000, (1, 128)),))}
    minilm = load("minilm")
    rows["all-MiniLM-L6-v2 with mask, sequence 128"] = timed(minilm.model, minilm.example_inputs)
    for name, row in rows.items():
        print(
            f"{name:<42} {row['seconds_median']:.2f} s  {row['macs'] / 1e9:.3f} G MACs "
            f"({row['counted_on']})"
        )
    payload = {
        "benchmark": "profile_speed",
        "rows": rows,
        "environment": environment(default_threads()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(__file__).parent / "results" / "profile_speed.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
