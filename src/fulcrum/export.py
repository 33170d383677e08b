"""Verified export: write a candidate as ONNX, safetensors or a torch.export program, and check it.

Every export is reloaded from disk and run on validation inputs next to the in-memory model it
came from; the largest absolute and relative differences are recorded, and an export beyond the
tolerance is refused. Each exported file's SHA-256 is written beside it, so that ``load`` refuses
a file changed after export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from torch import nn

from fulcrum.errors import CheckpointError, ConfigError, FulcrumError, OnnxError, first_line

if TYPE_CHECKING:
    from fulcrum.workloads import Workload

FORMATS = ("onnx", "safetensors", "pt2")
# float32 graphs agree to rounding; ONNX Runtime fuses and reorders, so allow a little more
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}
# the exported artifact's main metric on the validation split against the one the run recorded
# (thread counts may reorder float sums: a rare flipped prediction is allowed, not more)
METRIC_TOLERANCE = 0.005


def candidate_folder(run_dir: Path, trial: int | None = None) -> Path:
    """The folder holding the candidate to export: a trial, the sweet spot, or a compress run."""
    if not (run_dir / "results.json").is_file():
        raise ConfigError(
            f"{run_dir} is not a Fulcrum run folder (no results.json); give the folder a "
            "`fulcrum search` or `fulcrum compress` wrote."
        )
    if trial is not None:
        folder = run_dir / "trials" / str(trial)
        if not folder.exists():
            fetched(run_dir, trial, folder)
        if not (folder / "model.json").is_file():
            done = (
                sorted(int(p.name) for p in (run_dir / "trials").glob("*") if p.name.isdigit())
                if (run_dir / "trials").is_dir()
                else []
            )
            raise ConfigError(
                f"trial {trial} has no saved model in {run_dir}; trials with models: "
                f"{', '.join(map(str, done)) or 'none'}."
            )
        return folder
    for folder in (run_dir / "sweetspot", run_dir):
        if (folder / "model.json").is_file():
            return folder
    raise ConfigError(
        f"{run_dir} has no sweet spot to export (the search found none within budget); "
        "choose one with --trial N."
    )


def fetched(run_dir: Path, trial: int, folder: Path) -> None:
    """Fetch the files of a trial measured on another machine of the study into ``folder``,
    from the artifact store the search recorded (``fulcrum search --artifacts``), if any."""
    from fulcrum.artifacts import ATTR, fetch, open_store

    result = json.loads((run_dir / "results.json").read_text())
    record: dict[str, Any] = next(
        (t for t in result.get("trials", []) if t.get("number") == trial), {}
    )
    if result.get("artifacts") and ATTR in record:
        fetch(open_store(result["artifacts"], write=False), record[ATTR], folder)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validation_inputs(workload: Workload, limit: int = 256) -> tuple[torch.Tensor, ...]:
    """Up to ``limit`` samples of the validation split (example inputs if there is none)."""
    from fulcrum.runtimes import as_inputs

    if workload.val is None:
        return tuple(workload.example_inputs)
    parts: list[tuple[torch.Tensor, ...]] = []
    count = 0
    for batch in workload.val:
        x = as_inputs(batch[0] if isinstance(batch, list | tuple) else batch)
        parts.append(x)
        count += len(x[0])
        if count >= limit:
            break
    return tuple(torch.cat([p[i] for p in parts])[:limit] for i in range(len(parts[0])))


def recorded_metric(run_dir: Path, source: Path) -> tuple[str, float] | None:
    """The main metric the run recorded for the candidate in ``source`` (name, value)."""
    from fulcrum.metrics import MAIN_METRIC

    result = json.loads((run_dir / "results.json").read_text())
    name = MAIN_METRIC.get(str(result.get("task")), "metric")
    point = result.get("pick", {}).get("point")
    if source.name == "sweetspot" or source == run_dir:  # a search's pick, or a compress run
        return (name, float(point["metric"])) if point else None
    for trial in result.get("trials", []):
        if str(trial.get("number")) == source.name and trial.get("metric") is not None:
            return name, float(trial["metric"])
    return None


def difference(reference: torch.Tensor, exported: torch.Tensor) -> dict[str, float]:
    ref, out = reference.detach().double(), exported.detach().double()
    if ref.shape != out.shape:
        raise OnnxError(
            f"the export returns shape {list(out.shape)}, the model {list(ref.shape)}: it is not the same model."
        )
    diff = (ref - out).abs()
    return {
        "max_abs": float(diff.max()),
        "max_rel": float((diff / ref.abs().clamp_min(1e-6)).max()),
    }


def export(
    run_dir: Path,
    *,
    fmt: str = "onnx",
    trial: int | None = None,
    out: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export a run's sweet spot (or ``trial``) as ``fmt`` into ``out`` and verify it."""
    from fulcrum.compression import output_of, rebuild
    from fulcrum.runtimes import OnnxModel, output_tensor
    from fulcrum.workloads import load as load_workload

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    source = candidate_folder(run_dir, trial)
    manifest = json.loads((source / "model.json").read_text())
    out = out or run_dir / "export" / fmt
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder to export into.")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"{out} already holds files; pass --force to overwrite them, or choose --out."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"export path {str(out)!r} is not writable ({exc.strerror}); choose another --out."
        ) from None
    workload = load_workload(manifest["workload"])
    model: Any = workload.model  # an ONNX workload: its own float graph is the reference
    if isinstance(workload.model, nn.Module):
        model = rebuild(workload.model, source)
    elif fmt != "onnx":
        raise ConfigError(
            f"workload {manifest['workload']!r} is an ONNX graph, with no PyTorch weights to "
            f"write as {fmt}; export it with --format onnx."
        )
    inputs = validation_inputs(workload)
    with torch.no_grad():
        float_out = output_tensor(model(*inputs))
    quantized = manifest.get("runtime") == "onnxruntime"
    files: list[Path] = []
    artifact: Any
    if fmt == "onnx":
        target = out / "model.onnx"
        shutil.copyfile(source / "model.onnx", target)
        artifact = OnnxModel(target, threads=1, output=output_of(workload))
        files.append(target)
    elif fmt == "safetensors":
        for name in ("model.safetensors", "model.json"):
            shutil.copyfile(source / name, out / name)
        artifact = rebuild(workload.pytorch_model("export"), out)
        files += [out / "model.safetensors", out / "model.json"]
    else:
        from fulcrum.runtimes import with_batch

        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(
            model, with_batch(inputs, 2), dynamic_shapes=tuple({0: batch} for _ in inputs)
        )
        target = out / "model.pt2"
        torch.export.save(program, str(target))
        artifact = torch.export.load(str(target)).module()
        files.append(target)

    def refuse(reason: str) -> NoReturn:
        for f in files:
            f.unlink(missing_ok=True)
        raise OnnxError(
            f"the {fmt} export {reason}; it was not written. Report this with `fulcrum env`."
        )

    with torch.no_grad():
        exported = output_tensor(artifact(*inputs))
    parity: dict[str, Any] = {"samples": len(inputs[0])}
    # what the artifact is: the deployed int8/fp16 graph, or the float PyTorch model
    deployed_form = fmt == "onnx" or not quantized
    vs_float = difference(float_out, exported)
    if quantized and fmt == "onnx":
        parity["vs_float_max_abs"] = vs_float["max_abs"]  # int8 deviates by design: reported
    else:
        parity.update(vs_float)
        limit = TOLERANCE["atol"] + TOLERANCE["rtol"] * float(float_out.abs().max())
        if vs_float["max_abs"] > limit:
            refuse(
                f"differs from the model by {vs_float['max_abs']:.3g} (tolerance {limit:.3g}) "
                "on validation inputs"
            )
    from fulcrum.evaluation import evaluate_workload
    from fulcrum.metrics import MAIN_METRIC

    name = MAIN_METRIC[workload.task]
    score = evaluate_workload(workload, artifact, threads=1).metrics.get(name)
    parity["metric"] = {"name": name, "exported": score}
    recorded = recorded_metric(run_dir, source)
    if recorded is not None and deployed_form:
        parity["metric"]["recorded"] = recorded[1]
        parity["metric"]["tolerance"] = METRIC_TOLERANCE
        if score is None or abs(float(score) - recorded[1]) > METRIC_TOLERANCE:
            refuse(
                f"scores {name} {score} on the validation split, but the run recorded "
                f"{recorded[1]:.4f} for this candidate (tolerance {METRIC_TOLERANCE})"
            )
    checksums = {f.name: sha256(f) for f in files}
    (out / "SHA256SUMS.json").write_text(json.dumps(checksums, indent=2) + "\n")
    record = {
        "format": fmt,
        "source": str(source),
        "out": str(out),
        "files": sorted(checksums),
        "parity": parity,
        "tolerance": TOLERANCE,
        "runtime": manifest.get("runtime", "torch"),
    }
    (out / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load(path: Path | str, *, verify: bool = True) -> nn.Module:
    """A safetensors export (or candidate folder) as a PyTorch model, pruned shapes included.

    The folder's files are checked against the checksums written at export (a folder without
    ``SHA256SUMS.json`` is refused unless ``verify=False``); the architecture is rebuilt from
    the workload named in ``model.json`` and resized to the saved tensors.
    """
    from fulcrum.compression import rebuild
    from fulcrum.workloads import load as load_workload

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    for name in ("model.safetensors", "model.json"):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder} has no {name}; give a folder written by `fulcrum export --format safetensors`."
            )
    sums = folder / "SHA256SUMS.json"
    if verify and not sums.is_file():
        raise CheckpointError(
            f"{folder} has no SHA256SUMS.json, so its files cannot be checked; export it again, "
            "or load it with verify=False if you trust the files."
        )
    if verify:
        for name, digest in json.loads(sums.read_text()).items():
            if (folder / name).is_file() and sha256(folder / name) != digest:
                raise CheckpointError(
                    f"{folder / name} was changed after it was exported (checksum mismatch); export it again."
                )
    manifest = json.loads((folder / "model.json").read_text())
    original = load_workload(manifest["workload"]).model
    if not isinstance(original, nn.Module):
        raise CheckpointError(
            f"{folder} was exported from an ONNX workload: load its model.onnx instead."
        )
    try:
        return rebuild(original, folder)
    except FulcrumError:
        raise
    except Exception as exc:  # safetensors and torch raise assorted types for damaged files
        first = first_line(exc, 200)
        raise CheckpointError(
            f"{folder / 'model.safetensors'} cannot be loaded ({first}); export it again."
        ) from None
