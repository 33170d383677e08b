"""Does each technique really shrink and speed up? Every single technique and the combined recipe.

Runs on the `digits` baseline and on a Linear-heavy BERT-style encoder (4 layers, built from a
`transformers` config, trained here on a synthetic token task). For each recipe: the change of
the main metric, the size ratio of the deployed ONNX file, and latency ratios at batch 1 and 32
on ONNX Runtime and on PyTorch — baseline and candidate timed side by side, interleaved, in one
process. Prints a table and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/compression.py [--workload digits --workload bert-tiny] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from fulcrum.runs import compress_run
from fulcrum.workloads import Workload, load

RECIPES = {
    "digits": {
        "prune": "prune:0.5",
        "prune+finetune": "prune:0.5 > finetune:epochs=10",
        "sparsify": "sparsify:0.5",
        "lowrank": "lowrank:0.25",
        "distill (half-width student)": "distill:epochs=10,width=0.5",
        "quantize int8-static": "quantize:int8-static",
        "quantize int8-dynamic": "quantize:int8-dynamic",
        "quantize fp16": "quantize:fp16",
        "combined": "prune:0.5 > distill:epochs=10 > quantize:int8-static",
    },
    "bert-tiny": {
        "prune": "prune:0.5",
        "sparsify": "sparsify:0.5",
        "lowrank": "lowrank:0.25",
        "distill (half-width student)": "distill:epochs=4,width=0.5",
        "quantize int8-static": "quantize:int8-static",
        "quantize int8-dynamic": "quantize:int8-dynamic",
        "quantize fp16": "quantize:fp16",
        "combined": "prune:0.5 > distill:epochs=4 > quantize:int8-dynamic",
    },
}


def bert_tiny(seed: int = 0) -> Workload:
    """A 4-layer BERT-style classifier on a synthetic task: is token 1 more frequent than token 2?"""
    import transformers

    from fulcrum.train import fit
    from fulcrum.workloads.builtin import loaders

    g = torch.Generator().manual_seed(seed)
    n, length, vocab = 3000, 32, 400
    ids = torch.randint(3, vocab, (n, length), generator=g)
    for i in range(n):  # plant a few of tokens 1 and 2
        k1, k2 = torch.randint(0, 6, (2,), generator=g).tolist()
        positions = torch.randperm(length, generator=g)[: k1 + k2]
        ids[i, positions[:k1]] = 1
        ids[i, positions[k1:]] = 2
    labels = ((ids == 1).sum(1) > (ids == 2).sum(1)).long()
    train, val, calib = loaders(ids[:2400], labels[:2400], ids[2400:], labels[2400:], seed=seed)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config).eval()
    model = fit(model, train, "multiclass", epochs=4, lr=3e-4, seed=seed)
    return Workload(
        name="bert-tiny",
        task="multiclass",
        model=model,
        train=train,
        val=val,
        calib=calib,
        example_inputs=(ids[:1],),
        num_classes=2,
        source="benchmarks/compression.py",
    )


def summarize(label: str, result: dict[str, Any]) -> dict[str, Any]:
    main = result["main_metric"]
    base, cand = result["baseline"], result["candidate"]
    rows = {(r["model"], r["runtime"], r["batch_size"]): r["median_ms"] for r in result["latency"]}
    speed = {
        f"{rt}_b{b}": round(rows[("baseline", rt, b)] / rows[("candidate", rt, b)], 3)
        for (_, rt, b) in rows
        if ("candidate", rt, b) in rows
    }
    return {
        "recipe": label,
        "text": result["recipe"],
        "runtime": result["runtime"],
        "metric": main,
        "baseline": base["metrics"][main],
        "candidate": cand["metrics"][main],
        "drop_pt": round((base["metrics"][main] - cand["metrics"][main]) * 100, 2),
        "onnx_size_ratio": round(base["bytes"]["onnx"] / cand["bytes"]["onnx"], 2),
        "params_ratio": round(base["params"] / cand["params"], 2),
        "speedup": speed,
        "latency_ms": {f"{m}/{rt}/b{b}": v for (m, rt, b), v in rows.items()},
        "compress_seconds": result["compress_seconds"],
        "notes": [n for s in result["steps"] for n in s["notes"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", choices=sorted(RECIPES))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--recipe", action="append", help="only recipes with these labels")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    for name in args.workload or sorted(RECIPES):
        start = time.perf_counter()
        workload = load(name) if name != "bert-tiny" else bert_tiny()
        rows = []
        for label, recipe in RECIPES[name].items():
            if args.recipe and label not in args.recipe:
                continue
            run = compress_run(workload, recipe, seconds=args.seconds)
            assert run is not None and run.comparison is not None
            result = run.comparison.model_dump(mode="json")
            rows.append(summarize(label, result))
            r = rows[-1]
            print(
                f"{name:<10} {label:<30} {r['metric']} {r['baseline']:.4f} -> {r['candidate']:.4f} "
                f"({-r['drop_pt']:+.2f} pt)  size x{r['onnx_size_ratio']:<6} speedup "
                + " ".join(f"{k}={v:.2f}x" for k, v in r["speedup"].items()),
                flush=True,
            )
        payload = {
            "benchmark": "compression",
            "workload": name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(time.perf_counter() - start, 1),
            "environment": result["environment"],
            "rows": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"compression-{name}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
