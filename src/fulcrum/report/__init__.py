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

import jinja2
from plotly.offline import get_plotlyjs
from pydantic_core import to_jsonable_python

from fulcrum.runfolder import CompressSettings, ExportRecord, Run, Trial, read, write_text
from fulcrum.runtimes import thread_choices

TEMPLATE = Path(__file__).with_name("template.html.j2")


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside an HTML ``<script>`` element: ``<``, ``>`` and
    ``&`` are escaped as JavaScript escapes, so that no string (a metric's name, a recipe in an
    edited results.json) can close the element or open another (Django's ``json_script``)."""
    text = json.dumps(to_jsonable_python(value), default=str)
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def chosen_folder(run_dir: Path) -> Path | None:
    """Where the chosen model was saved: sweetspot/ of a search, the folder of a compress run."""
    for folder in (run_dir / "sweetspot", run_dir):
        if (folder / "model.json").is_file():
            return folder
    return None


def pareto_png(run: Run, path: Path) -> Path:
    """A static Pareto chart (metric against latency and against size) for documents."""
    import matplotlib  # (the report's PNG only: loaded when one is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in run.trials if t.state == "COMPLETE"]
    front = {p.trial for p in run.frontier}
    pick, base = run.pick.point, run.baseline
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "latency_ms", "latency (ms)"),
        (axes[1], "size_bytes", "size (bytes)"),
    ):
        for group, colour, name in (
            (False, "#bbbbbb", "over budget"),
            (True, "#4c78a8", "within budget"),
        ):
            rows = [t for t in trials if t.feasible == group]
            ax.scatter(
                [getattr(t, key) for t in rows],
                [t.metric for t in rows],
                c=colour,
                s=18,
                label=name,
            )
        pts = sorted((getattr(t, key), t.metric) for t in trials if str(t.number) in front)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], c="#f58518", lw=1.5, label="frontier")
        ax.scatter(
            [getattr(base, key)], [base.metric], marker="s", c="black", s=40, label="baseline"
        )
        if pick:
            ax.scatter(
                [getattr(pick, key)],
                [pick.metric],
                marker="*",
                c="#e45756",
                s=220,
                label="sweet spot",
                zorder=5,
            )
        limit = run.budget.limits.get(key)
        if limit:
            ax.axvline(limit, ls="--", c="#e45756", lw=1)
        if run.budget.floor is not None:
            ax.axhline(run.budget.floor, ls=":", c="#54a24b", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("metric")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{Path(run.workload).name}: {len(trials)} trials")
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


def _threads_line(run: Run) -> str:
    """How many threads to run the sweet spot with: on ONNX Runtime, the intra-op count it ran
    fastest with (the baseline's own fastest beside it), else the run's."""
    pick, threads = run.pick.point, run.environment.get("threads", "?")
    runtime = run.settings.runtime
    if runtime != "onnxruntime" or pick is None or pick.threads is None:
        return f"{threads} threads."
    choices = ", ".join(map(str, thread_choices(int(threads)))) if threads.isdigit() else threads
    return (
        f"intra-op threads {pick.threads} (`SessionOptions.intra_op_num_threads`): the fastest of "
        f"{choices} for this model at this batch size; the baseline's figures are at its own "
        f"fastest, {run.baseline.threads or threads}."
    )


def _batch(run: Run) -> int:
    settings = run.settings
    return (
        settings.batch_sizes[0] if isinstance(settings, CompressSettings) else settings.batch_size
    )


def card(run: Run, run_dir: Path) -> str:
    """The sweet spot's model card, in Markdown."""
    pick, base = run.pick.point, run.baseline
    lines = [f"# Model card: {Path(run.workload).name}, sweet spot", ""]
    if pick is None:
        return "\n".join(
            [
                *lines,
                "No candidate met the budget: there is no sweet spot.",
                "",
                run.pick.reason,
                "",
            ]
        )
    notes = (
        run.trial(pick.trial).notes
        if pick.trial.isdigit()
        else [
            "one of the runtime's own default quantizations, measured beside the search's candidates"
        ]
    )
    chosen = chosen_folder(run_dir)
    manifest = json.loads((chosen / "model.json").read_text()) if chosen is not None else {}
    runtime = run.settings.runtime
    lines += [
        "## What was done",
        "",
        f"Recipe: `{pick.recipe or '(none: the baseline itself)'}` (trial {pick.trial}, seed "
        f"{run.settings.seed}).",
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
        f"| metric | {base.metric:.4f} | {pick.metric:.4f} | {(pick.metric - base.metric) * 100:+.2f} pt |",
        f"| latency, batch {_batch(run)} ({runtime}) | {base.latency_ms:.3f} ms | "
        f"{pick.latency_ms:.3f} ms | {base.latency_ms / pick.latency_ms:.2f}x faster |",
        f"| size on disk | {base.size_bytes:,} B | {pick.size_bytes:,} B | "
        f"{base.size_bytes / pick.size_bytes:.1f}x smaller |",
        f"| MACs | {base.macs:,} | {pick.macs:,} | {base.macs / max(pick.macs, 1):.2f}x fewer |",
        f"| parameters | {base.params:,} | {pick.params:,} | |",
        "",
        *_all_metrics(base.metrics, pick.metrics),
        f"Why this one: {run.pick.reason}",
        "",
        "## Intended runtime",
        "",
        f"{runtime} on CPU ({run.environment.get('cpu')}), "
        + _threads_line(run)
        + " Latency is a ratio to the baseline measured side by side and scaled by the "
        "baseline's latency; it will differ on other machines.",
        "",
        "## Limits",
        "",
        "- The figures come from the workload's validation split only; check the model on your own test data.",
        "- int8 models are calibrated on the calibration split; inputs far outside it may lose more accuracy.",
        *[f"- {n}" for n in notes],
        *_exports(run_dir),
        "",
        f"Written by Fulcrum {run.fulcrum}.",
    ]
    return "\n".join(lines) + "\n"


def _exports(run_dir: Path) -> list[str]:
    """What the run's verified exports hold and what was checked, one section per format."""
    lines: list[str] = []
    export = run_dir / "export"
    for path in sorted(export.glob("*/export.json")) if export.is_dir() else []:
        try:
            record = ExportRecord.model_validate_json(path.read_text())
        except ValueError:  # an export from another version, or damaged: not described
            continue
        p = record.parity
        lines += ["", f"## Export ({record.format})", "", f"It holds {record.contains}."]
        metric = p.metric
        if metric is not None and metric.checked and metric.recorded is not None:
            lines.append(
                f"The exported file, re-evaluated on the validation split: {metric.name} "
                f"{metric.exported:.4f} (the run recorded {metric.recorded:.4f}; "
                f"tolerance {metric.tolerance})."
            )
        elif metric is not None:
            lines.append(
                f"Its {metric.name} was not checked against the run (exported with --no-check, "
                "or a form the run did not measure)."
            )
        if p.max_abs is not None:
            lines.append(
                f"Checked against the float model on {p.samples} validation samples: max abs "
                f"difference {p.max_abs:.3g}, max relative {p.max_rel:.3g}."
            )
        if p.vs_float_max_abs is not None:
            lines.append(
                f"Deviation of the quantized model from the float model on {p.samples} "
                f"validation samples: max abs {p.vs_float_max_abs:.3g}."
            )
    return lines


def reproduce(run: Run) -> str:
    """The command that reproduces the run."""
    s = run.settings
    if isinstance(s, CompressSettings):
        return f"fulcrum compress {run.workload} --recipe {json.dumps(s.recipe)} --seed {s.seed}"
    search = run.search
    parts = [
        f"fulcrum search {run.workload}",
        f"--trials {search.trials}",
        f"--runtime {search.runtime}",
        f"--batch-size {search.batch_size}",
        f"--sampler {search.sampler}",
        f"--seed {search.seed}",
        f"--policy {search.policy}",
    ]
    if search.max_drop is not None:
        parts.append(f"--max-drop {search.max_drop}" + (" --relative" if search.relative else ""))
    parts += [f"--budget {k}={v}" for k, v in search.budgets.items()]
    parts += [f"--objective {o}" for o in search.objectives]
    parts += [
        f"--trial-seconds {search.trial_seconds}",
        f"--final-seconds {search.final_seconds}",
        f"--finalists {search.finalists}",
        f"--max-epochs {search.max_epochs}",
    ]
    return " ".join(parts)


def write_report(run_dir: Path) -> dict[str, Path]:
    """Render report.html, pareto.png and card.md into ``run_dir``; return their paths."""
    run = read(run_dir)
    png = pareto_png(run, run_dir / "pareto.png")
    card_text = card(run, run_dir)
    write_text(run_dir / "card.md", card_text)
    if (run_dir / "sweetspot").is_dir():
        write_text(run_dir / "sweetspot" / "card.md", card_text)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["script_json"] = script_json
    html = env.from_string(TEMPLATE.read_text()).render(
        result=run,
        trials=run.trials,
        trial_rows=[_row(t) for t in run.trials],
        batch=_batch(run),
        layers=run.layers,  # measured by the run that wrote it
        card=card_text,
        plotly=get_plotlyjs(),
        command=reproduce(run),
        python=sys.version.split()[0],
        machine=platform.machine(),
        name=Path(run.workload).name,
    )
    write_text(run_dir / "report.html", html)
    return {"report": run_dir / "report.html", "png": png, "card": run_dir / "card.md"}


def _row(t: Trial) -> dict[str, Any]:
    """A trial as the report's charts read it."""
    return {**t.model_dump(mode="json"), "feasible": t.feasible}
