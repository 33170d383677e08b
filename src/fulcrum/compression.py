"""Apply a recipe — an ordered list of technique configs — to a model: ``compress()``.

Recipe text: steps separated by ``>``, each ``technique[:arguments]`` with comma-separated
``key=value`` arguments; a bare value sets the technique's main parameter, ``+`` joins list items::

    prune:ratio=0.5,importance=taylor > distill:epochs=5 > quantize:int8-static

A TOML recipe has one ``[[step]]`` table per step with ``technique = "..."`` and its parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fulcrum.errors import ConfigError
from fulcrum.runtimes import (
    OnnxModel,
    default_threads,
    exported_bytes,
    keeps_caller_state,
    torch_threads,
)
from fulcrum.techniques import (
    Candidate,
    Context,
    Step,
    TechniqueConfig,
    config_from_dict,
    get,
    recurrent,
)
from fulcrum.techniques.base import coerce, copy_model, find_modules
from fulcrum.techniques.layers import keep_layers_
from fulcrum.techniques.prune import _fix_attention
from fulcrum.train import TaskFunctions

if TYPE_CHECKING:
    from fulcrum.workloads import Workload

Recipe = tuple[TechniqueConfig, ...]


# bounds checked before any work: a recipe is a handful of steps, a value a few layer names
MAX_STEPS = 16
MAX_TEXT = 4000


def parse_recipe(text: str) -> Recipe:
    """``"prune:0.5 > quantize:int8-static"`` -> (PruneConfig(ratio=0.5), QuantizeConfig(...))."""
    if len(text) > MAX_TEXT:
        raise ConfigError(
            f"the recipe is {len(text):,} characters long; a recipe is at most {MAX_TEXT:,} "
            f"(steps like 'prune:ratio=0.5 > quantize:int8-static'): shorten it."
        )
    steps = [part.strip() for part in text.split(">")]
    if not text.strip() or any(not s for s in steps):
        raise ConfigError(
            f"recipe {text!r} has an empty step; write steps like 'prune:ratio=0.5 > quantize:int8-static'."
        )
    configs = []
    for step in steps:
        name, _, args = step.partition(":")
        technique = get(name.strip())
        values: dict[str, Any] = {}
        for arg in (a.strip() for a in args.split(",") if a.strip()):
            key, eq, raw = arg.partition("=")
            if not eq:
                if technique.config.primary is None:
                    raise ConfigError(f"recipe step {step!r}: give {name} parameters as key=value.")
                key, raw = technique.config.primary, arg
            if key.strip() in values:
                raise ConfigError(
                    f"recipe step {step!r} sets {key.strip()!r} twice; give each parameter once."
                )
            values[key.strip()] = coerce(technique.config, key.strip(), raw.strip())
        configs.append(technique.config(**values))
    return check_order(tuple(configs))


def load_recipe(path: Path) -> Recipe:
    """A recipe from a TOML file with ``[[step]]`` tables."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read as TOML ({exc}).") from None
    unknown = sorted(set(data) - {"step"})
    if unknown:
        raise ConfigError(
            f"recipe file {path.name} has {unknown[0]!r}, which a recipe does not know; it holds "
            "[[step]] tables only."
        )
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(
            f"recipe file {path.name} needs [[step]] tables, each with technique = '...'."
        )
    configs = []
    for step in steps:
        step = dict(step)
        if "technique" not in step:
            raise ConfigError(f"recipe file {path.name}: every [[step]] needs technique = '...'.")
        configs.append(config_from_dict({"type": step.pop("technique"), **step}))
    return check_order(tuple(configs))


def recipe_from(spec: str) -> Recipe:
    """A recipe from text, or from a ``.toml`` file when ``spec`` names one."""
    return load_recipe(Path(spec)) if spec.endswith(".toml") else parse_recipe(spec)


def check_order(recipe: Recipe) -> Recipe:
    """PyTorch steps first, then graph steps (``fuse``), then at most one ``quantize``, last."""
    if len(recipe) > MAX_STEPS:
        raise ConfigError(
            f"the recipe has {len(recipe)} steps; a recipe has at most {MAX_STEPS}: remove steps."
        )
    for i, config in enumerate(recipe[:-1]):
        after = recipe[i + 1]
        if config.name == "quantize":
            raise ConfigError(
                f"recipe step {i + 1} ({config}) must be the last: nothing can follow quantize; "
                f"move '{after.name}' before it."
            )
        if get(config.name).acts_on == "onnx" and get(after.name).acts_on == "torch":
            raise ConfigError(
                f"recipe step {i + 2} ({after.name}) changes the PyTorch model, but step {i + 1} "
                f"({config.name}) already turned it into an ONNX graph; move '{after.name}' before it."
            )
    return recipe


# the config fields that name layers of the model (``layer_ratios``: "name:ratio" entries)
LAYER_FIELDS = ("skip", "layer_ratios")


def check_layers(recipe: Recipe, model: nn.Module | OnnxModel) -> None:
    """Every layer a recipe names is a layer of ``model``: refused before any work (a layer that
    a later step cannot find would otherwise be found missing after training)."""
    if not isinstance(model, nn.Module):  # an ONNX workload's steps name graph nodes
        return
    for config in recipe:
        for name in LAYER_FIELDS:
            entries = getattr(config, name, ())
            find_modules(
                model, [e.rpartition(":")[0] if name == "layer_ratios" else e for e in entries]
            )


def recipe_text(recipe: Sequence[TechniqueConfig]) -> str:
    return " > ".join(str(c) for c in recipe) or "(none)"


def context_of(
    workload: Workload,
    *,
    seed: int = 0,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Context:
    """The data and teacher a recipe may use, taken from a Workload."""
    teacher = workload.model if isinstance(workload.model, nn.Module) else None
    return Context(
        task=workload.task,
        example_inputs=tuple(workload.example_inputs),
        train=workload.train,
        val=workload.val,
        calib=workload.calib,
        teacher=teacher,
        num_classes=workload.num_classes,
        threads=threads,
        seed=seed,
        progress=progress or (lambda _m: None),
        on_epoch=on_epoch,
        functions=TaskFunctions(workload.loss, workload.distill_loss, workload.postprocess),
    )


@keeps_caller_state("model")
def compress(
    model: nn.Module | OnnxModel,
    recipe: Sequence[TechniqueConfig] | str,
    workload: Workload,
    *,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    cache: MutableMapping[str, Candidate] | None = None,
) -> Candidate:
    """Apply ``recipe`` to ``model`` in order, using ``workload``'s data; the input is untouched.

    With ``cache``, the candidate after each recipe prefix is kept there and reused: a search
    that tries three quantizations of the same pruned and fine-tuned model trains it once.

    ``model`` may be an ONNX workload's graph (an OnnxModel): then only graph steps apply (fuse,
    quantize). Torch's threads and random generator and the caller's model mode are left as
    they were.

    >>> candidate = compress(workload.model, "prune:0.5 > finetune:3", workload)  # doctest: +SKIP
    """
    steps = parse_recipe(recipe) if isinstance(recipe, str) else check_order(tuple(recipe))
    check_layers(steps, model)
    threads = threads or default_threads()
    report = progress or (lambda _m: None)
    ctx = context_of(workload, seed=seed, threads=threads, progress=report, on_epoch=on_epoch)
    candidate = Candidate.of(model)
    done = 0
    if cache is not None:
        for n in range(len(steps), 0, -1):
            key = f"{seed}|{recipe_text(steps[:n])}"
            if key in cache:
                candidate, done = cache[key], n
                report(f"reusing {recipe_text(steps[:n])}")
                break
    with torch_threads(threads):
        for i in range(done, len(steps)):
            report(f"step {i + 1}/{len(steps)}: {steps[i]}")
            candidate = get(steps[i].name).apply(steps[i], candidate, ctx)
            if cache is not None:
                cache[f"{seed}|{recipe_text(steps[: i + 1])}"] = candidate
    return candidate


class PrefixCache(MutableMapping[str, Candidate]):
    """``compress``'s cache of recipe prefixes for a search: the latest ``keep`` in memory, and
    those whose last step took ``costly`` seconds or more (recovery training) also on disk in
    ``folder``, where every worker of the run folder, and a resumed search, find them — a pruned
    and recovered model is trained once per study folder, whichever process drew it first.

    On disk a candidate is its weights as safetensors (rebuilt into ``original``'s architecture
    by ``rebuild``), its graph as ONNX and JSON: nothing is unpickled, so a file planted in a run
    folder cannot run code. Folders are written whole (under a temporary name, then renamed)
    and the newest ``on_disk`` are kept; one that cannot be read (damaged, from another
    version) is a miss, never an error.
    """

    def __init__(
        self,
        folder: Path,
        original: nn.Module | OnnxModel,
        keep: int = 24,
        costly: float = 1.0,
        on_disk: int = 32,
    ) -> None:
        self.folder, self.original = folder, original
        self.keep, self.costly, self.on_disk = keep, costly, on_disk
        self.memory: dict[str, Candidate] = {}

    def _path(self, key: str) -> Path:
        return self.folder / hashlib.sha1(key.encode()).hexdigest()[:20]

    def __getitem__(self, key: str) -> Candidate:
        if key in self.memory:
            return self.memory[key]
        try:
            candidate = read_cached(self._path(key), key, self.original)
        except Exception:  # missing, half-written, damaged or from another version: a miss
            raise KeyError(key) from None
        self.memory[key] = candidate
        return candidate

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __setitem__(self, key: str, candidate: Candidate) -> None:
        if len(self.memory) >= self.keep:
            self.memory.clear()
        self.memory[key] = candidate
        if not candidate.steps or candidate.steps[-1].seconds < self.costly:
            return
        path = self._path(key)
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            write_cached(candidate, partial, key)
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)
        except (OSError, TypeError, ValueError):  # a full disk, facts not JSON: memory only
            shutil.rmtree(partial, ignore_errors=True)
            return
        saved = sorted(
            (f for f in self.folder.iterdir() if f.is_dir() and "." not in f.name),
            key=lambda f: f.stat().st_mtime,
        )
        for old in saved[: max(0, len(saved) - self.on_disk)]:
            shutil.rmtree(old, ignore_errors=True)

    def __delitem__(self, key: str) -> None:
        self.memory.pop(key, None)
        shutil.rmtree(self._path(key), ignore_errors=True)

    def __iter__(self) -> Any:
        return iter(self.memory)

    def __len__(self) -> int:
        return len(self.memory)


def write_cached(candidate: Candidate, folder: Path, key: str) -> None:
    """A candidate as tensors and JSON: its weights with ``save_candidate``'s manifest, the
    graph it became (if any), and its steps."""
    folder.mkdir(parents=True, exist_ok=True)
    if candidate.model is not None:
        save_weights(candidate, folder)
    if candidate.onnx is not None:
        (folder / "graph.onnx").write_bytes(candidate.onnx)
    steps = [
        {"config": s.config, "seconds": s.seconds, "notes": list(s.notes), "facts": s.facts}
        for s in candidate.steps
    ]
    record = {"key": key, "runtime": candidate.runtime, "steps": steps}
    (folder / "candidate.json").write_text(json.dumps(record))


def read_cached(folder: Path, key: str, original: nn.Module | OnnxModel) -> Candidate:
    """A candidate written by ``write_cached``, its weights rebuilt into ``original``'s class."""
    record = json.loads((folder / "candidate.json").read_text())
    if record["key"] != key:
        raise KeyError(key)
    model = None
    if (folder / "model.safetensors").is_file() and isinstance(original, nn.Module):
        model = rebuild(original, folder)
    graph = folder / "graph.onnx"
    steps = tuple(
        Step(config=s["config"], seconds=s["seconds"], notes=tuple(s["notes"]), facts=s["facts"])
        for s in record["steps"]
    )
    return Candidate(
        model=model,
        onnx=graph.read_bytes() if graph.is_file() else None,
        runtime=record["runtime"],
        steps=steps,
    )


def onnx_bytes(candidate: Candidate, example_inputs: Sequence[torch.Tensor]) -> bytes:
    """The candidate's ONNX graph: its quantized graph, or its float model exported."""
    if candidate.onnx is not None:
        return candidate.onnx
    return exported_bytes(candidate.require_float("export"), example_inputs)


# -- saving and reloading ---------------------------------------------------------------------


def save_candidate(
    candidate: Candidate, folder: Path, example_inputs: Sequence[torch.Tensor], workload_source: str
) -> dict[str, str]:
    """Write the deployable form (the ONNX graph, or the int8 program of ``quantize:int8-pt2e``
    as ``model.pt2``), the PyTorch weights and a manifest into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if candidate.program is not None:
        (folder / "model.pt2").write_bytes(candidate.program)
        files = {"pt2": "model.pt2", "manifest": "model.json"}
    else:
        (folder / "model.onnx").write_bytes(onnx_bytes(candidate, example_inputs))
        files = {"onnx": "model.onnx", "manifest": "model.json"}
    if candidate.model is not None:  # an ONNX workload's candidates are graphs only
        files["safetensors"] = "model.safetensors"
    save_weights(candidate, folder, workload_source)
    return files


def save_weights(candidate: Candidate, folder: Path, workload_source: str = "") -> None:
    """The PyTorch weights (``model.safetensors``) and the manifest ``rebuild`` reads to fit
    them into the architecture they came from (``model.json``)."""
    model = candidate.model
    if model is not None:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
    manifest = {
        "format": "fulcrum-candidate",
        "version": 1,
        "workload": workload_source,
        "runtime": candidate.runtime,
        "steps": [s.config for s in candidate.steps],
        "factorised": [
            name for s in candidate.steps for name in s.facts.get("layers_factorised", [])
        ],
        "layers_kept": [
            s.facts["layers_kept"] for s in candidate.steps if "layers_kept" in s.facts
        ],
        "attention_heads": {  # heads may have been removed: the count of every attention
            name: module.num_attention_heads
            for name, module in (model.named_modules() if model is not None else ())
            if isinstance(getattr(module, "num_attention_heads", None), int)
        },
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")


def rebuild(model: nn.Module, folder: Path) -> nn.Module:
    """Load a saved candidate's weights into a fresh copy of its original architecture.

    Layers keep their classes; shapes come from the saved tensors (pruning changes them), and
    factorised layers become the two-layer form they were saved in. Nothing is unpickled.
    """

    manifest = json.loads((folder / "model.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    model = copy_model(model)
    if manifest.get("layers_kept"):
        for kept in manifest["layers_kept"]:  # a shallower student: drop what was dropped
            keep_layers_(model, kept)
    for name in manifest.get("factorised", []):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        bias = getattr(old, "bias", None) is not None
        if isinstance(old, nn.Linear):  # shapes are fixed below, from the saved tensors
            pair = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=bias))
        elif isinstance(old, nn.RNNBase):  # its input matrix factorised in front of it
            pair = recurrent.InputFactored(nn.Linear(1, 1, bias=False), old)
        else:
            pair = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 1, 1, bias=bias))
        setattr(parent, attr, pair)
    modules = dict(model.named_modules())
    for key, tensor in state.items():
        module_name, _, tensor_name = key.rpartition(".")
        module = modules.get(module_name)
        if module is None:
            continue
        current = getattr(module, tensor_name, None)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            replacement = torch.empty_like(tensor)
            if isinstance(current, nn.Parameter):
                setattr(
                    module,
                    tensor_name,
                    nn.Parameter(replacement, requires_grad=current.requires_grad),
                )
            else:
                module.register_buffer(tensor_name, replacement)
    for module in model.modules():
        _fit_attributes(module)
    for name, count in manifest.get("attention_heads", {}).items():
        modules[name].num_attention_heads = count
    _fix_attention(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{folder}/model.safetensors does not fit the workload's model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); reload it with the workload it was compressed from."
        )
    return model.eval()


def _fit_attributes(module: nn.Module) -> None:
    """Make a layer's size attributes agree with its (possibly pruned) tensors."""
    if isinstance(module, nn.RNNBase):
        recurrent.fit_sizes_(module)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = weight.shape[0]
        if depthwise:
            module.groups = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = weight.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape


def load_candidate(folder: Path, threads: int | None = None) -> tuple[nn.Module | None, OnnxModel]:
    """A saved candidate: (its PyTorch model rebuilt from its workload, its ONNX model).

    The ONNX model runs from the folder alone; the PyTorch model needs the workload's model code
    (a built-in, or the user's TOML workload) to build the architecture the weights fit.
    """
    from fulcrum.workloads import load

    manifest = json.loads((folder / "model.json").read_text())
    onnx_model = OnnxModel(folder / "model.onnx", threads)
    try:
        original = load(manifest["workload"]).model
    except Exception:
        return None, onnx_model
    if not isinstance(original, nn.Module):  # an ONNX workload: judged on the same output
        return None, OnnxModel(folder / "model.onnx", threads, original.chosen_output)
    return rebuild(original, folder), onnx_model


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
