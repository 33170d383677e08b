"""The run report: ``report.html`` (self-contained, works offline), ``pareto.png`` and ``card.md``.

Everything is rendered from the run folder alone (``results.json`` and the saved candidates), so
``fulcrum report RUN_DIR`` can re-render a run at any time.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from fulcrum.errors import ConfigError

TEMPLATE = Path(__file__).with_name("template.html.j2")


def load_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir} is not a folder; give a run folder written by `fulcrum search`."
        )
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} is not a run folder: results.json is missing; give a folder written by "
            "`fulcrum search` or `fulcrum compress`."
        )
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc.msg}); the run was interrupted before it ended."
        ) from None
    missing = [k for k in ("baseline", "trials", "frontier", "pick", "settings") if k not in result]
    if missing:
        raise ConfigError(
            f"{path} lacks {', '.join(missing)}: it is not from `fulcrum search` or `fulcrum compress`."
        )
    return result


def chosen_folder(run_dir: Path) -> Path | None:
    """Where the chosen model was saved: sweetspot/ of a search, the folder of a compress run."""
    for folder in (run_dir / "sweetspot", run_dir):
        if (folder / "model.json").is_file():
            return folder
    return None


def pareto_png(result: dict[str, Any], path: Path) -> Path:
    """A static Pareto chart (metric against latency and against size) for documents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    front = {p["trial"] for p in result["frontier"]}
    pick = result["pick"]["point"]
    base = result["baseline"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "latency_ms", "latency (ms)"),
        (axes[1], "size_bytes", "size (bytes)"),
    ):
        feasible = [t for t in trials if max(t.get("constraints", [0])) <= 0]
        infeasible = [t for t in trials if max(t.get("constraints", [0])) > 0]
        ax.scatter(
            [t[key] for t in infeasible],
            [t["metric"] for t in infeasible],
            c="#bbbbbb",
            s=18,
            label="over budget",
        )
        ax.scatter(
            [t[key] for t in feasible],
            [t["metric"] for t in feasible],
            c="#4c78a8",
            s=18,
            label="within budget",
        )
        pts = sorted((t[key], t["metric"]) for t in trials if str(t["number"]) in front)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], c="#f58518", lw=1.5, label="frontier")
        ax.scatter([base[key]], [base["metric"]], marker="s", c="black", s=40, label="baseline")
        if pick:
            ax.scatter(
                [pick[key]],
                [pick["metric"]],
                marker="*",
                c="#e45756",
                s=220,
                label="sweet spot",
                zorder=5,
            )
        limit = result["settings"]["budgets"].get(key) or (
            result["settings"]["budgets"].get("size_mb", 0) * 1e6 if key == "size_bytes" else None
        )
        if limit:
            ax.axvline(limit, ls="--", c="#e45756", lw=1)
        if result["settings"].get("max_drop") is not None:
            ax.axhline(
                base["metric"] - result["settings"]["max_drop"] / 100, ls=":", c="#54a24b", lw=1
            )
        ax.set_xlabel(label)
        ax.set_ylabel("metric")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{Path(str(result['workload'])).name}: {len(trials)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _all_metrics(base: dict[str, Any], pick: dict[str, Any]) -> list[str]:
    """Every metric the task reports, baseline beside sweet spot (for a forecaster, its MAE
    beside the seasonal-naive forecast's, ``naive_mae``, and their ratio ``mae_vs_naive``)."""
    names = [k for k, v in base.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    if not names:
        return []

    def shown(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, int | float) else "-"

    return [
        "| every metric | baseline | sweet spot |",
        "| --- | --- | --- |",
        *[f"| {n} | {shown(base[n])} | {shown(pick.get(n))} |" for n in names],
        "",
    ]


def _threads_line(runtime: str, threads: Any, pick: dict[str, Any], base: dict[str, Any]) -> str:
    """How many threads to run the sweet spot with: on ONNX Runtime, the intra-op count it ran
    fastest with (the baseline's own fastest beside it), else the search's."""
    from fulcrum.runtimes import thread_choices

    chosen = pick.get("threads")
    if runtime != "onnxruntime" or chosen is None:
        return f"{threads} threads."
    return (
        f"intra-op threads {chosen} (`SessionOptions.intra_op_num_threads`): the fastest of "
        f"{', '.join(map(str, thread_choices(int(threads))))} for this model at this batch size; "
        f"the baseline's figures are at its own fastest, {base.get('threads', threads)}."
    )


def card(result: dict[str, Any], run_dir: Path) -> str:
    """The sweet spot's model card, in Markdown."""
    pick, base = result["pick"]["point"], result["baseline"]
    lines = [f"# Model card: {Path(str(result['workload'])).name}, sweet spot", ""]
    if pick is None:
        return "\n".join(
            [
                *lines,
                "No candidate met the budget: there is no sweet spot.",
                "",
                result["pick"]["reason"],
                "",
            ]
        )
    trial = next(t for t in result["trials"] if str(t["number"]) == str(pick["trial"]))
    manifest = (
        json.loads((chosen / "model.json").read_text())
        if (chosen := chosen_folder(run_dir)) is not None
        else {}
    )
    runtime = result["settings"]["runtime"]
    lines += [
        "## What was done",
        "",
        f"Recipe: `{pick.get('recipe') or '(none: the baseline itself)'}` (trial {pick['trial']}, seed "
        f"{result['settings']['seed']}).",
        "",
        *[
            f"- `{s.get('type')}`: "
            + ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("type", "version"))
            for s in manifest.get("steps", [])
        ],
        "",
        "## Figures (validation split)",
        "",
        "| | baseline | sweet spot | ratio |",
        "| --- | --- | --- | --- |",
        f"| metric | {base['metric']:.4f} | {pick['metric']:.4f} | {(pick['metric'] - base['metric']) * 100:+.2f} pt |",
        f"| latency, batch {result['settings']['batch_size']} ({runtime}) | {base['latency_ms']:.3f} ms | "
        f"{pick['latency_ms']:.3f} ms | {base['latency_ms'] / pick['latency_ms']:.2f}x faster |",
        f"| size on disk | {base['size_bytes']:,} B | {int(pick['size_bytes']):,} B | "
        f"{base['size_bytes'] / pick['size_bytes']:.1f}x smaller |",
        f"| MACs | {base['macs']:,} | {int(pick['macs']):,} | {base['macs'] / max(pick['macs'], 1):.2f}x fewer |",
        f"| parameters | {base['params']:,} | {int(pick['params']):,} | |",
        "",
        *_all_metrics(base.get("metrics") or {}, trial.get("metrics") or {}),
        f"Why this one: {result['pick']['reason']}",
        "",
        "## Intended runtime",
        "",
        f"{runtime} on CPU ({result['environment'].get('cpu')}), "
        + _threads_line(runtime, result["environment"].get("threads"), pick, base)
        + " Latency is a ratio to the baseline measured side by side and scaled by the "
        "baseline's latency; it will differ on other machines.",
        "",
        "## Limits",
        "",
        "- The figures come from the workload's validation split only; check the model on your own test data.",
        "- int8 models are calibrated on the calibration split; inputs far outside it may lose more accuracy.",
        *[f"- {n}" for n in trial.get("notes", [])],
    ]
    export = run_dir / "export"
    for record in sorted(export.glob("*/export.json")) if export.is_dir() else []:
        data = json.loads(record.read_text())
        p = data["parity"]
        lines += ["", f"## Export ({data['format']})", ""]
        metric = p.get("metric", {})
        if metric.get("recorded") is not None:
            lines.append(
                f"The exported file, re-evaluated on the validation split: {metric['name']} "
                f"{metric['exported']:.4f} (the run recorded {metric['recorded']:.4f}; "
                f"tolerance {metric['tolerance']})."
            )
        if "max_abs" in p:
            lines.append(
                f"Checked against the float model on {p['samples']} validation samples: max abs "
                f"difference {p['max_abs']:.3g}, max relative {p['max_rel']:.3g}."
            )
        if "vs_float_max_abs" in p:
            lines.append(
                f"Deviation of the quantized model from the float model on {p['samples']} "
                f"validation samples: max abs {p['vs_float_max_abs']:.3g}."
            )
    return "\n".join(lines) + "\n"


def reproduce(result: dict[str, Any]) -> str:
    s = result["settings"]
    if "recipe" in s:
        return f"fulcrum compress {result['workload']} --recipe {json.dumps(s['recipe'])} --seed {s['seed']}"
    parts = [
        f"fulcrum search {result['workload']}",
        f"--trials {s['trials']}",
        f"--runtime {s['runtime']}",
        f"--batch-size {s['batch_size']}",
        f"--sampler {s['sampler']}",
        f"--seed {s['seed']}",
        f"--policy {s['policy']}",
    ]
    if s.get("max_drop") is not None:
        parts.append(f"--max-drop {s['max_drop']}" + (" --relative" if s.get("relative") else ""))
    parts += [f"--budget {k}={v}" for k, v in s.get("budgets", {}).items()]
    parts += [f"--objective {o}" for o in s["objectives"]]
    return " ".join(parts)


def write_report(run_dir: Path) -> dict[str, Path]:
    """Render report.html, pareto.png and card.md into ``run_dir``; return their paths."""
    import jinja2
    from plotly.offline import get_plotlyjs

    result = load_results(run_dir)
    png = pareto_png(result, run_dir / "pareto.png")
    card_text = card(result, run_dir)
    (run_dir / "card.md").write_text(card_text)
    if (run_dir / "sweetspot").is_dir():
        (run_dir / "sweetspot" / "card.md").write_text(card_text)
    trials = result["trials"]
    for t in trials:
        t["feasible"] = t["state"] == "COMPLETE" and max(t.get("constraints", [0])) <= 0
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["tojson_raw"] = lambda v: json.dumps(v, default=str)
    html = env.from_string(TEMPLATE.read_text()).render(
        result=result,
        trials=trials,
        layers=result.get("layers", {}),  # measured by the run that wrote it
        card=card_text,
        plotly=get_plotlyjs(),
        command=reproduce(result),
        python=sys.version.split()[0],
        machine=platform.machine(),
        name=Path(str(result["workload"])).name,
    )
    (run_dir / "report.html").write_text(html)
    return {"report": run_dir / "report.html", "png": png, "card": run_dir / "card.md"}
