"""Verified export: write a candidate as ONNX, safetensors or a torch.export program, and check it.

Every export is built in a staging folder beside its destination, reloaded from disk and run on
validation inputs next to the in-memory model it came from (the largest absolute and relative
differences are recorded; beyond the tolerance it is refused), and scored on the validation
split against the metric the run recorded. Only then is it moved into place with
``export.json`` (what it is, what was checked) and ``SHA256SUMS.json`` (the digest of every
other file in the folder), so that a crash or a refusal leaves nothing, and ``load`` and
``verify`` refuse a folder whose files changed, or whose sums are missing or partial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fulcrum.artifacts import fetch, open_store
from fulcrum.compression import rebuild
from fulcrum.errors import CheckpointError, ConfigError, FulcrumError, OnnxError, first_line
from fulcrum.evaluation import evaluate_workload
from fulcrum.measuring import output_of
from fulcrum.metrics import MAIN_METRIC
from fulcrum.runfolder import ExportRecord, MetricCheck, Parity, Run, disk_error, read
from fulcrum.runtimes import OnnxModel, as_inputs, output_tensor
from fulcrum.runtimes.torch_compile import CompiledSession, export_program, program_bytes
from fulcrum.workloads import load as load_workload

if TYPE_CHECKING:
    from fulcrum.workloads import Workload

FORMATS = ("onnx", "safetensors", "pt2", "hf", "openvino")
# formats of the deployed graph (the others: the PyTorch model)
GRAPHS = ("onnx", "hf", "openvino")
# the graph output name in the hf layout, per task (what the Optimum classes read)
HF_OUTPUTS = {"multiclass": "logits", "binary": "logits", "embedding": "sentence_embedding"}
# what each format needs from the candidate's folder
NEEDS = {
    "onnx": ("model.onnx",),
    "safetensors": ("model.safetensors", "model.json"),
    "pt2": ("model.safetensors", "model.json"),
    "hf": ("model.onnx",),
    "openvino": ("model.onnx",),
}
# float32 graphs agree to rounding; ONNX Runtime fuses and reorders, so allow a little more
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}
# the exported artifact's main metric on the validation split against the one the run recorded
# (thread counts may reorder float sums: a rare flipped prediction is allowed, not more)
METRIC_TOLERANCE = 0.005
SUMS, RECORD = "SHA256SUMS.json", "export.json"


def candidate_folder(run: Run, run_dir: Path, fmt: str, trial: int | None = None) -> Path:
    """The folder holding the candidate to export (a trial, the sweet spot, or a compress run),
    with the files ``fmt`` needs."""
    if trial is not None:
        record = next((t for t in run.trials if t.number == trial), None)
        folder = run_dir / "trials" / str(trial)
        if not folder.exists() and record is not None and run.artifacts and record.artifacts:
            fetch(open_store(run.artifacts, write=False), record.artifacts, folder)
        if record is None or not (folder / "model.json").is_file():
            done = sorted(
                t.number for t in run.trials if (run_dir / "trials" / str(t.number)).is_dir()
            )
            raise ConfigError(
                f"trial {trial} has no saved model in {run_dir}; trials with models: "
                f"{', '.join(map(str, done)) or 'none'}."
            )
    elif run.pick.point is None:
        raise ConfigError(
            f"{run_dir} has no sweet spot to export (the search found none within budget); "
            "choose one with --trial N."
        )
    else:
        folder = run_dir / "sweetspot" if run.command == "search" else run_dir
    if int8_program(folder) and fmt in GRAPHS:
        raise ConfigError(
            f"{folder} holds PyTorch's int8 program (quantize:int8-pt2e), not an ONNX graph; "
            "export it with --format pt2."
        )
    missing = [name for name in NEEDS[fmt] if not (folder / name).is_file()]
    graph_only = (folder / "model.onnx").is_file() and (folder / "model.json").is_file()
    if missing == ["model.safetensors"] and graph_only:  # an ONNX workload's candidate
        raise ConfigError(
            f"workload {run.workload!r} is an ONNX graph, with no PyTorch weights to write as "
            f"{fmt}; export it with --format onnx."
        )
    if missing:
        raise ConfigError(
            f"{folder / missing[0]} is missing, so the candidate cannot be exported as {fmt}; "
            "run the command that wrote the run folder again, or export another --trial."
        )
    return folder


def int8_program(folder: Path) -> bool:
    """Whether the candidate in ``folder`` deploys as PyTorch's int8 program
    (``quantize:int8-pt2e``): its manifest says it runs on torch-compile. A float candidate
    timed there has a ``model.pt2`` too, and every other format as well."""
    manifest = folder / "model.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("runtime") == "torch-compile"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validation_inputs(workload: Workload, limit: int = 256) -> tuple[torch.Tensor, ...]:
    """Up to ``limit`` samples of the validation split (example inputs if there is none)."""
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


def recorded_metric(run: Run, run_dir: Path, source: Path) -> float | None:
    """The main metric the run recorded for the candidate in ``source``."""
    if source.name == "sweetspot" or source == run_dir:  # a search's pick, or a compress run
        return run.pick.point.metric if run.pick.point else None
    for trial in run.trials:
        if str(trial.number) == source.name:
            return trial.metric
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
    check: bool = True,
) -> ExportRecord:
    """Export a run's sweet spot (or ``trial``) as ``fmt`` into ``out`` and verify it.

    Without ``check``, a candidate whose metric the run did not record (a pruned trial) is
    exported unchecked, and its record and card say so; otherwise that is refused.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    run = read(run_dir)
    source = candidate_folder(run, run_dir, fmt, trial)
    recorded = recorded_metric(run, run_dir, source)
    if recorded is None and check:
        raise ConfigError(
            f"the run recorded no metric for {source.name} (it was not measured to the end), so "
            "the export cannot be checked against it; pass --no-check to export it unchecked."
        )
    out = out or run_dir / "export" / fmt
    writable(out, force)
    staging = out.parent / f".{out.name}.{os.getpid()}.partial"
    try:
        staging.mkdir(parents=True)
        record = _build(run, source, fmt, staging, recorded)
        seal(staging, record)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as exc:
        raise disk_error(out, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def writable(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a folder with files in it (without ``force``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder to export into.")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"{out} already holds files; pass --force to overwrite them, or choose --out."
        )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ConfigError(
            f"export path {str(out)!r} is not writable ({parent} is not a writable folder); "
            "choose another --out."
        )


def _build(run: Run, source: Path, fmt: str, folder: Path, recorded: float | None) -> ExportRecord:
    """Write the artifact into ``folder``, reload it, and check it against the model."""
    manifest = json.loads((source / "model.json").read_text())
    workload = load_workload(run.workload)
    model: Any = workload.model  # an ONNX workload: its own float graph is the reference
    if isinstance(workload.model, nn.Module):
        model = rebuild(workload.model, source)
    elif fmt != "onnx":
        raise ConfigError(
            f"workload {run.workload!r} is an ONNX graph, with no PyTorch weights to write as "
            f"{fmt}; export it with --format onnx."
        )
    inputs = validation_inputs(workload)
    artifact = _write(fmt, source, folder, workload, model, inputs)
    graph = manifest.get("runtime") == "onnxruntime"  # the recipe made a graph (int8, fused)
    program = int8_program(source)
    quantize = any(s.get("type") == "quantize" for s in manifest.get("steps", []))
    quantized = (graph or program) and quantize
    # int8 deviates by design, and OpenVINO may compute in bf16: reported, not refused (the
    # metric re-check still guards the export)
    deviates = (graph and fmt in GRAPHS) or (program and fmt == "pt2") or fmt == "openvino"
    parity = _parity(fmt, model, artifact, inputs, deviates)
    # the form the run measured: the graph, the int8 program, or the float model
    deployed_form = fmt == "pt2" if program else (fmt in GRAPHS or not graph)
    score = evaluate_workload(workload, artifact, threads=1).metrics.get(MAIN_METRIC[workload.task])
    parity.metric = MetricCheck(
        name=MAIN_METRIC[workload.task],
        exported=score,
        recorded=recorded if deployed_form else None,
        tolerance=METRIC_TOLERANCE,
        checked=recorded is not None and deployed_form,
    )
    if parity.metric.checked and (
        score is None or abs(float(score) - float(recorded or 0)) > METRIC_TOLERANCE
    ):
        raise OnnxError(
            f"the {fmt} export scores {parity.metric.name} {score} on the validation split, but "
            f"the run recorded {recorded:.4f} for this candidate (tolerance {METRIC_TOLERANCE}); "
            "it was not written. Report this with `fulcrum env`."
        )
    return ExportRecord(
        format=fmt,
        workload=run.workload,
        source=str(source),
        files=sorted(p.name for p in folder.iterdir()),
        contains=_contents(fmt, quantized, program),
        parity=parity,
        tolerance=TOLERANCE,
        runtime=manifest.get("runtime", "torch"),
    )


def _write(
    fmt: str,
    source: Path,
    folder: Path,
    workload: Workload,
    model: Any,
    inputs: tuple[torch.Tensor, ...],
) -> Any:
    """The artifact written into ``folder`` and loaded back from it."""
    if fmt == "onnx":
        shutil.copyfile(source / "model.onnx", folder / "model.onnx")
        return OnnxModel(folder / "model.onnx", threads=1, output=output_of(workload))
    if fmt == "hf":
        return _write_hf(source, folder, workload)
    if fmt == "openvino":
        return _write_openvino(source, folder, workload)
    if fmt == "safetensors":
        for name in ("model.safetensors", "model.json"):
            shutil.copyfile(source / name, folder / name)
        return rebuild(workload.pytorch_model("export"), folder)
    if int8_program(source):  # the int8 program the run measured, as it ran
        shutil.copyfile(source / "model.pt2", folder / "model.pt2")
        return CompiledSession((folder / "model.pt2").read_bytes(), 1, "torch-compile")
    (folder / "model.pt2").write_bytes(program_bytes(export_program(model, inputs)))
    return torch.export.load(str(folder / "model.pt2")).module()


def _write_hf(source: Path, folder: Path, workload: Workload) -> OnnxModel:
    """Hugging Face's layout of the deployed graph, loadable without Fulcrum: ``model.onnx``
    (inputs named as the tokenizer's or image processor's outputs; output ``logits`` for a
    classifier, as Optimum's ``ORTModelFor...Classification`` reads it, ``sentence_embedding``
    for an embedding model, the mean-pooled vector, for ``ORTModelForCustomTasks`` or
    onnxruntime), the model's ``config.json`` and its tokenizer or image processor."""
    import onnx

    model_folder = workload.info.get("transformers_folder")
    name = HF_OUTPUTS.get(workload.task)
    if model_folder is None or name is None:
        raise ConfigError(
            f"--format hf writes a transformers model, and workload {workload.name!r} is not one "
            "(a text workload from a model folder or --model); export it with --format onnx."
        )
    graph = onnx.load(str(source / "model.onnx"))
    names = {graph.graph.output[0].name: name}
    if "processor_folder" in workload.info:  # an image classifier: its input as processed
        names[graph.graph.input[0].name] = "pixel_values"
    for value in [*graph.graph.input, *graph.graph.output]:
        value.name = names.get(value.name, value.name)
    for node in graph.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    onnx.save(graph, str(folder / "model.onnx"))
    shutil.copyfile(Path(model_folder) / "config.json", folder / "config.json")
    _preprocessor(workload).save_pretrained(str(folder))
    return OnnxModel(folder / "model.onnx", threads=1, output=name)


def _preprocessor(workload: Workload) -> Any:
    """The tokenizer or image processor of a transformers workload, as it was loaded."""
    if "processor_folder" in workload.info:
        from fulcrum.workloads.images import load_classifier

        return load_classifier(Path(workload.info["processor_folder"]), "--format hf")[1]
    from fulcrum.workloads.text import load_tokenizer

    return load_tokenizer(Path(workload.info["tokenizer_folder"]), "--format hf")


def _write_openvino(source: Path, folder: Path, workload: Workload) -> Any:
    """The deployed graph as OpenVINO IR (``model.xml``, ``model.bin``; weights kept in f32),
    compiled back from the folder as the openvino target runs it."""
    from fulcrum.errors import MissingDependencyError
    from fulcrum.runtimes import unavailable

    missing = unavailable("openvino")
    if missing is not None:
        raise MissingDependencyError(f"--format openvino: {missing}.")
    import openvino

    from fulcrum.runtimes.openvino import OpenVinoModel, core

    ir = folder / "model.xml"
    model = core().read_model(str(source / "model.onnx"))
    openvino.save_model(model, str(ir), compress_to_fp16=False)
    return OpenVinoModel(ir, threads=1, output=output_of(workload))


def _parity(
    fmt: str, model: Any, artifact: Any, inputs: tuple[torch.Tensor, ...], deviates: bool
) -> Parity:
    """The export's outputs against the float model's on validation inputs: equal within the
    tolerance for a float artifact; for one that ``deviates`` by design (the int8 a recipe made),
    its deviation is recorded."""
    with torch.no_grad():
        float_out = output_tensor(model(*inputs))
        exported = output_tensor(artifact(*inputs))
    vs_float = difference(float_out, exported)
    samples = len(inputs[0])
    if deviates:
        return Parity(samples=samples, vs_float_max_abs=vs_float["max_abs"])
    limit = TOLERANCE["atol"] + TOLERANCE["rtol"] * float(float_out.abs().max())
    if vs_float["max_abs"] > limit:
        raise OnnxError(
            f"the {fmt} export differs from the model by {vs_float['max_abs']:.3g} (tolerance "
            f"{limit:.3g}) on validation inputs; it was not written. Report this with `fulcrum env`."
        )
    return Parity(samples=samples, max_abs=vs_float["max_abs"], max_rel=vs_float["max_rel"])


def _contents(fmt: str, quantized: bool, program: bool = False) -> str:
    """What the artifact holds, said plainly: an int8 run's PyTorch formats hold its float model."""
    if fmt == "openvino":
        return (
            "the deployed graph as OpenVINO IR (model.xml, model.bin; weights in f32), which "
            "OpenVINO runs at its default precision for the CPU (bf16 where the CPU has it)"
        )
    if fmt in GRAPHS:
        graph = (
            "the deployed graph (int8/fp16 as the recipe made it)"
            if quantized
            else "the float graph"
        )
        if fmt == "hf":
            graph += " as model.onnx, with config.json and its preprocessor (Hugging Face's layout)"
        return graph
    kind = "weights (safetensors)" if fmt == "safetensors" else "program (torch.export)"
    if quantized and program and fmt == "pt2":
        return "the deployed int8 program (torch.export, quantize:int8-pt2e), to compile"
    if quantized:
        measured = "the pt2 export" if program else "the ONNX export"
        return (
            f"the float PyTorch {kind} from before quantization: the int8 model the run measured "
            f"is {measured}"
        )
    return f"the PyTorch {kind} of the candidate"


def seal(folder: Path, record: ExportRecord) -> None:
    """``export.json``, then ``SHA256SUMS.json`` with the digest of every other file."""
    (folder / RECORD).write_text(record.model_dump_json(indent=2) + "\n")
    sums = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / SUMS).write_text(json.dumps(sums, indent=2) + "\n")


def check_sums(folder: Path) -> None:
    """Refuse ``folder`` unless ``SHA256SUMS.json`` lists every other file in it, each with
    its digest: a missing, empty or partial sums file verifies nothing."""
    path = folder / SUMS
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {SUMS}, so its files cannot be checked; export it again, or load "
            "it with verify=False if you trust the files."
        )
    try:
        sums = json.loads(path.read_text())
    except (OSError, ValueError):
        sums = None
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS}
    if not isinstance(sums, dict) or not sums or set(sums) != present:
        raise CheckpointError(
            f"{path} does not list every file of the export (it lists {len(sums or {})}, the "
            f"folder holds {len(present)}): it was edited or damaged; export it again."
        )
    for name, digest in sorted(sums.items()):
        if sha256(folder / name) != digest:
            raise CheckpointError(
                f"{folder / name} was changed after it was exported (checksum mismatch); "
                "export it again."
            )


def verify(folder: Path, threads: int | None = None) -> tuple[ExportRecord, float | None]:
    """Check an export folder's sums, then score its artifact on the validation split again and
    compare with what the export recorded; return the record and the score."""
    check_sums(folder)
    record = ExportRecord.model_validate_json((folder / RECORD).read_text())
    workload = load_workload(record.workload)
    if record.format == "onnx":
        artifact: Any = OnnxModel(folder / "model.onnx", threads, output_of(workload))
    elif record.format == "hf":
        artifact = OnnxModel(folder / "model.onnx", threads, HF_OUTPUTS[workload.task])
    elif record.format == "openvino":
        from fulcrum.runtimes import default_threads
        from fulcrum.runtimes.openvino import OpenVinoModel

        artifact = OpenVinoModel(
            folder / "model.xml", threads or default_threads(), output_of(workload)
        )
    elif record.format == "safetensors":
        artifact = rebuild(workload.pytorch_model("verify"), folder)
    elif record.runtime == "torch-compile":  # the int8 program, compiled as the run ran it
        artifact = CompiledSession((folder / "model.pt2").read_bytes(), 1, record.runtime)
    else:
        artifact = torch.export.load(str(folder / "model.pt2")).module()
    metric = record.parity.metric
    if metric is None:
        raise CheckpointError(
            f"{folder / RECORD} records no metric to verify against; export it again."
        )
    score = evaluate_workload(workload, artifact, threads=threads).metrics.get(metric.name)
    if metric.exported is not None and (
        score is None or abs(float(score) - metric.exported) > METRIC_TOLERANCE
    ):
        raise CheckpointError(
            f"{folder} scores {metric.name} {score} on the validation split, but it scored "
            f"{metric.exported:.4f} when exported (tolerance {METRIC_TOLERANCE})."
        )
    return record, score


def load(path: Path | str, *, verify: bool = True) -> nn.Module:
    """A safetensors export (or candidate folder) as a PyTorch model, pruned shapes included.

    The folder's files are checked against the checksums written at export (a folder without
    a complete ``SHA256SUMS.json`` is refused unless ``verify=False``); the architecture is
    rebuilt from the workload named in ``model.json`` and resized to the saved tensors.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    for name in ("model.safetensors", "model.json"):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder} has no {name}; give a folder written by `fulcrum export --format safetensors`."
            )
    if verify:
        check_sums(folder)
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


class _Callable(types.ModuleType):
    """``fulcrum.export(run_dir, ...)`` calls ``export()``: once this module is imported it
    is the attribute ``fulcrum.export``, so the module carries the API's name (as
    ``fulcrum.search`` does)."""

    def __call__(self, *args: Any, **kwargs: Any) -> ExportRecord:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
