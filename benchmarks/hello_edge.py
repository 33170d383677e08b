"""The Hello Edge table: the keyword-spotting families (DNN, CNN, LSTM, GRU, CRNN beside the
DS-CNN of `keywords`) side by side, each baseline and its searched sweet spot, from the search
benchmarks' JSON (run them first, one after another on a quiet machine):

    for w in keywords keywords-dnn keywords-cnn keywords-lstm keywords-gru keywords-crnn; do
        .venv/bin/python benchmarks/search.py --workload $w --trials 16 --references ort
    done
    .venv/bin/python benchmarks/hello_edge.py

Per family: accuracy, parameters, MACs and ONNX Runtime fp32 latency at batch 1 of the
baseline; the sweet spot's accuracy, how much smaller and faster it is (timed side by side with
the baseline in its own run), ONNX Runtime's default static int8 beside it, and accuracy per
millisecond. Prints the table and writes benchmarks/results/hello-edge.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
FAMILIES = {
    "keywords-dnn": "DNN",
    "keywords-cnn": "CNN",
    "keywords-lstm": "LSTM",
    "keywords-gru": "GRU",
    "keywords-crnn": "CRNN",
    "keywords": "DS-CNN",
}


def row(name: str, data: dict[str, Any]) -> dict[str, Any]:
    rows = {r["model"]: r for r in data["rows"]}
    base, pick = rows["baseline"], rows.get("sweet spot")
    default = rows.get("ort-default-int8")
    out: dict[str, Any] = {
        "family": FAMILIES[name],
        "workload": name,
        "baseline_accuracy": base["accuracy"],
        "params": data["baseline"]["params"],
        "macs": data["baseline"]["macs"],
        "baseline_onnx_bytes": base["onnx_bytes"],
        "baseline_latency_b1_ms": base["latency_b1_ms"],
        "baseline_accuracy_per_ms": round(base["accuracy"] / base["latency_b1_ms"], 2),
        "ort_default_int8_speedup_b1": default["speedup_b1"] if default else None,
        "trials": data["trials"],
        "date": data["date"],
    }
    if pick is not None:
        out |= {
            "sweet_spot": pick["recipe"],
            "sweet_spot_accuracy": pick["accuracy"],
            "drop_pt": pick["drop_pt"],
            "smaller": pick["size_ratio"],
            "faster_b1": pick["speedup_b1"],
            "sweet_spot_latency_b1_ms": pick["latency_b1_ms"],
            "sweet_spot_accuracy_per_ms": round(pick["accuracy"] / pick["latency_b1_ms"], 2),
            "goal_3x_smaller_1.5x_faster": pick["size_ratio"] >= 3 and pick["speedup_b1"] >= 1.5,
        }
    return out


def main() -> None:
    table = []
    for name in FAMILIES:
        path = RESULTS / f"search-{name}-tpe.json"
        if path.is_file():
            table.append(row(name, json.loads(path.read_text())))
    header = "family  acc     params   MACs      fp32 ms  sweet spot acc  smaller  faster  acc/ms"
    print(header)
    for r in table:
        print(
            f"{r['family']:<7} {r['baseline_accuracy']:.4f}  {r['params']:>7,}  "
            f"{r['macs'] / 1e6:>6.2f} M  {r['baseline_latency_b1_ms']:>7.4f}  "
            f"{r.get('sweet_spot_accuracy', float('nan')):.4f}          "
            f"{r.get('smaller', 0):>5.2f}x  {r.get('faster_b1', 0):>5.2f}x  "
            f"{r.get('sweet_spot_accuracy_per_ms', 0):>7.2f}"
        )
    best = max(table, key=lambda r: r.get("sweet_spot_accuracy_per_ms", 0), default=None)
    payload = {
        "benchmark": "hello-edge",
        "rows": table,
        "best_accuracy_per_ms": best["family"] if best else None,
        "environment": next(
            (json.loads((RESULTS / f"search-{n}-tpe.json").read_text())["environment"]
             for n in FAMILIES if (RESULTS / f"search-{n}-tpe.json").is_file()),
            None,
        ),
    }  # fmt: skip
    (RESULTS / "hello-edge.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"best accuracy per ms: {payload['best_accuracy_per_ms']}; wrote hello-edge.json")


if __name__ == "__main__":
    main()
