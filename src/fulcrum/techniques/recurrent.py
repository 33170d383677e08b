"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) in the techniques.

Pruning: our own pruner, registered with Torch-Pruning (``customized_pruners``) for every
recurrent class, so that Torch-Pruning's dependency graph still couples a recurrent layer with
the layers around it (the convolution or Linear that feeds it, the Linear that reads its output,
through reshapes and concatenations) while the slicing inside it is done here. Torch-Pruning's
own LSTM pruner (v1.6.1) asserts ``num_layers == 1`` and indexes the gate blocks of the
recurrent matrix and of the biases inconsistently; it has no GRU or RNN pruner. While
Torch-Pruning traces the model, each recurrent layer runs as one autograd node (``opaque``), so
that it sees the layer's input and output instead of the gates inside.

A hidden unit is a row in every gate of its layer's input and recurrent matrices (4 gates for an
LSTM, 3 for a GRU, 1 for a plain RNN), a column of its own recurrent matrix, and a column of the
next layer's input matrix (both directions' inputs, where bidirectional). ``nn.LSTM`` keeps one
``hidden_size`` for every layer and direction, so every layer keeps the same number of units:
the last layer's (what the rest of the model reads) are chosen by Torch-Pruning's importance over
the group, the same in both directions of a bidirectional layer (its output is declared as two
channel groups); the inner layers' by the magnitude of each unit's weights. Where a layer cannot
be pruned (``plan``), it keeps its units, the step's notes say why, and the rest is pruned.

Low-rank (``factor_input``): only the first layer's input matrices, where that saves a good
share of the layer's MACs. int8 (``quantize_lstms``, ``quantize_notes``): ONNX Runtime's
dynamic LSTM; GRUs and plain RNNs stay in float, and the notes say that no runtime here
quantizes them.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
import torch_pruning as tp
from onnxruntime import quantization as ort_quantization
from torch import nn

from fulcrum.runtimes import output_tensor

RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def gates(rnn: nn.RNNBase) -> int:
    """How many gate blocks the layer's weight matrices stack (LSTM 4, GRU 3, RNN 1)."""
    return GATES[rnn.mode]


def directions(rnn: nn.RNNBase) -> int:
    return 2 if rnn.bidirectional else 1


def _suffix(direction: int) -> str:
    return "_reverse" if direction else ""


def unprunable(rnn: nn.RNNBase) -> str | None:
    """Why the hidden units of ``rnn`` cannot be pruned here, or None when they can."""
    if rnn.mode not in GATES:
        return f"a {type(rnn).__name__} of mode {rnn.mode!r}"
    if getattr(rnn, "proj_size", 0):
        return "an LSTM with proj_size (its projection is not sliced here)"
    return None


def _gate_rows(kept: torch.Tensor, hidden: int, count: int) -> torch.Tensor:
    """The rows of a stacked gate matrix that belong to hidden units ``kept``."""
    return torch.cat([kept + g * hidden for g in range(count)])


def slice_hidden_(
    rnn: nn.RNNBase,
    kept: dict[tuple[int, int], torch.Tensor],
    inputs_kept: torch.Tensor | None = None,
) -> None:
    """Keep hidden units ``kept[(layer, direction)]`` (sorted, the same count for every layer and
    direction) and input features ``inputs_kept`` (None: all) of ``rnn``, in place."""
    hidden, count = rnn.hidden_size, gates(rnn)
    sizes = {len(k) for k in kept.values()}
    if len(sizes) != 1:
        raise ValueError(f"every layer and direction must keep as many units; got {sizes}")
    for layer in range(rnn.num_layers):
        if layer == 0:
            columns = inputs_kept
        else:  # the previous layer's outputs, direction after direction
            columns = torch.cat([kept[(layer - 1, d)] + d * hidden for d in range(directions(rnn))])
        for d in range(directions(rnn)):
            units, name = kept[(layer, d)], f"l{layer}{_suffix(d)}"
            rows = _gate_rows(units, hidden, count)
            w_ih = getattr(rnn, f"weight_ih_{name}").detach()[rows]
            if columns is not None:
                w_ih = w_ih[:, columns]
            w_hh = getattr(rnn, f"weight_hh_{name}").detach()[rows][:, units]
            _set(rnn, f"weight_ih_{name}", w_ih)
            _set(rnn, f"weight_hh_{name}", w_hh)
            if rnn.bias:
                for kind in ("ih", "hh"):
                    bias = getattr(rnn, f"bias_{kind}_{name}").detach()[rows]
                    _set(rnn, f"bias_{kind}_{name}", bias)
    rnn.hidden_size = sizes.pop()
    if inputs_kept is not None:
        rnn.input_size = len(inputs_kept)
    _refresh(rnn)


def _matrix(rnn: nn.RNNBase, name: str) -> torch.Tensor:
    found = getattr(rnn, name)
    assert isinstance(found, torch.Tensor)
    return found


def _set(rnn: nn.RNNBase, name: str, value: torch.Tensor) -> None:
    old = getattr(rnn, name)
    setattr(rnn, name, nn.Parameter(value.clone().contiguous(), old.requires_grad))


def _refresh(rnn: nn.RNNBase) -> None:
    """Point the layer's flat weight list at its (new) parameters."""
    rnn._init_flat_weights()


def fit_sizes_(rnn: nn.RNNBase) -> None:
    """Make ``rnn``'s size attributes agree with its (possibly pruned) tensors, in place."""
    rnn.input_size, rnn.hidden_size = (
        _matrix(rnn, f"weight_{k}_l0").shape[1] for k in ("ih", "hh")
    )
    _refresh(rnn)


def unit_importance(rnn: nn.RNNBase, layer: int, direction: int) -> torch.Tensor:
    """Each hidden unit's magnitude: the L2 norm of its gate rows (input and recurrent), of its
    column in the recurrent matrix, and of its columns in the next layer's input matrices."""
    hidden, count = rnn.hidden_size, gates(rnn)
    name = f"l{layer}{_suffix(direction)}"
    w_ih = getattr(rnn, f"weight_ih_{name}").detach()
    w_hh = getattr(rnn, f"weight_hh_{name}").detach()
    energy = w_ih.pow(2).sum(1).view(count, hidden).sum(0)
    energy += w_hh.pow(2).sum(1).view(count, hidden).sum(0) + w_hh.pow(2).sum(0)
    if layer + 1 < rnn.num_layers:
        for d in range(directions(rnn)):
            after = getattr(rnn, f"weight_ih_l{layer + 1}{_suffix(d)}").detach()
            energy += after[:, direction * hidden : (direction + 1) * hidden].pow(2).sum(0)
    return energy.sqrt()


def _strongest(scores: torch.Tensor, count: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, count).indices).values


class RecurrentPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning's pruner for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` of any depth and
    direction: its output channels are the last layer's hidden units (direction after
    direction), its input channels the first layer's input features.

    The inner layers of a layer in ``aligned`` keep the same units as its last layer (the model
    reads its final states ``h_n``, whose rows are every layer's units); the others keep their
    own strongest units.
    """

    TARGET_MODULES = RECURRENT

    def __init__(self, aligned: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.aligned = list(aligned)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, nn.RNNBase)
        hidden, removed = layer.hidden_size, {int(i) for i in idxs}
        last = layer.num_layers - 1
        kept = {
            (last, d): torch.tensor(
                [u for u in range(hidden) if d * hidden + u not in removed], dtype=torch.long
            )
            for d in range(directions(layer))
        }
        size = len(kept[(last, 0)])
        aligned = any(layer is m for m in self.aligned)
        for inner in range(last):
            for d in range(directions(layer)):
                kept[(inner, d)] = (
                    kept[(last, d)]
                    if aligned
                    else _strongest(unit_importance(layer, inner, d), size)
                )
        slice_hidden_(layer, kept)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, nn.RNNBase)
        removed = {int(i) for i in idxs}
        columns = torch.tensor([i for i in range(layer.input_size) if i not in removed])
        every = torch.arange(layer.hidden_size)
        kept = {(n, d): every for n in range(layer.num_layers) for d in range(directions(layer))}
        slice_hidden_(layer, kept, columns)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, nn.RNNBase)
        return layer.hidden_size * directions(layer)

    def get_in_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, nn.RNNBase)
        return layer.input_size


class RecurrentImportance:
    """Torch-Pruning's importance ``base``, and for a group it cannot rank (no layer of a type
    it knows reads the units: an RNN feeding another RNN) the recurrent layer's own magnitude."""

    def __init__(self, base: Any, pruner: RecurrentPruner) -> None:
        self.base, self.pruner = base, pruner

    def __call__(self, group: Any) -> torch.Tensor | None:
        found = self.base(group)
        if found is not None:
            return found
        scores = [
            torch.cat([unit_importance(m, m.num_layers - 1, d) for d in range(directions(m))])
            for dep, _idxs in group
            if isinstance(m := dep.target.module, nn.RNNBase)
            and dep.handler == self.pruner.prune_out_channels
        ]
        return torch.stack(scores).mean(0) if scores else None


class _Recurrence(torch.autograd.Function):
    """One autograd node standing for a whole recurrent layer while Torch-Pruning traces the
    model: its inputs are the layer's input and weights, its outputs the layer's results
    (computed beforehand). Torch-Pruning then sees the layer as it sees a Linear, instead of
    the gates, slices and concatenations inside it."""

    @staticmethod
    def forward(ctx: Any, count: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a traced recurrence is never differentiated")


@dataclass
class LayerUse:
    """What one forward pass showed of a recurrent layer's use."""

    state_read: bool = False  # the model's output depends on its final states (h_n, c_n)
    given_state: bool = False  # the model passes it an initial state
    packed: bool = False  # its input is a PackedSequence
    nodes: list[Any] = field(default_factory=list)


def _opaque_forward(
    rnn: nn.RNNBase, call: LayerUse | None, couple_states: bool
) -> Callable[..., Any]:
    """A forward for ``rnn`` whose results come out of one ``_Recurrence`` node: its final
    states too when ``couple_states``; else, while recording a ``call``, from a node of their
    own (recorded), or without any (detached)."""
    original = rnn.forward

    def forward(input: Any, hx: Any = None) -> Any:
        with torch.no_grad():
            output, state = original(input, hx)
        packed = isinstance(output, nn.utils.rnn.PackedSequence)
        if call is not None:
            call.given_state = call.given_state or hx is not None
            call.packed = call.packed or packed
        states = list(state) if isinstance(state, tuple) else [state]
        # a leaf that needs gradients: the node is recorded even where the weights are frozen
        weights = [torch.zeros((), requires_grad=True), *rnn.parameters()]
        first = output.data if packed else output
        shared = [first, *states] if couple_states else [first]
        x = input.data if packed else input
        results = list(_Recurrence.apply(len(shared), *shared, x, *weights))
        if not couple_states and call is not None:  # a node of their own: are they read?
            results += _Recurrence.apply(len(states), *states, *weights)
            call.nodes.append(results[-1].grad_fn)
        elif not couple_states:  # no node: Torch-Pruning must not couple their readers
            results += states
        out = nn.utils.rnn.PackedSequence(results[0], *output[1:]) if packed else results[0]
        finals = results[1:]
        return out, (tuple(finals) if isinstance(state, tuple) else finals[0])

    return forward


@contextlib.contextmanager
def opaque(
    model: nn.Module, calls: dict[nn.Module, LayerUse] | None, couple: Sequence[nn.Module] = ()
) -> Iterator[None]:
    """While open, every recurrent layer of ``model`` runs as one ``_Recurrence`` node (and
    records its use in ``calls``, where given)."""
    layers = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    for rnn in layers:
        call = None if calls is None else calls.setdefault(rnn, LayerUse())
        rnn.forward = _opaque_forward(rnn, call, rnn in couple)
    try:
        yield
    finally:
        for rnn in layers:
            del rnn.forward


def usage(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[nn.Module, LayerUse]:
    """How the model uses each of its recurrent layers, from one forward pass."""
    calls: dict[nn.Module, LayerUse] = {}
    with opaque(model, calls), torch.enable_grad():
        start = output_tensor(model(*inputs)).grad_fn
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(parent for parent, _ in node.next_functions)
    for call in calls.values():
        call.state_read = any(node in seen for node in call.nodes)
    return calls


def layer_ratios_(pruner: Any, ratios: dict[nn.Module, float]) -> None:
    """Give the recurrent layers among ``ratios`` their own pruning ratio, in place.

    Torch-Pruning's ``MetaPruner`` reads a layer's own ratio for its built-in layer types only
    (its types include ``nn.LSTM``, not ``nn.GRU`` or ``nn.RNN``): this does for the others
    what its constructor does for those, with the same two records.
    """
    for module, ratio in ratios.items():
        if not isinstance(module, nn.RNNBase) or module in pruner._layer_to_scope:
            continue
        pruner.pruning_ratio_dict[module] = pruner.iterative_pruning_ratio_scheduler(
            ratio, pruner.iterative_steps
        )
        pruner._layer_to_scope[module] = (f"_Recurrent_Scope_{id(module)}", [module])


@dataclass
class PruningPlan:
    """How ``prune`` treats a model's recurrent layers: those whose hidden units stay (by name,
    with the reason), the pruner and Torch-Pruning's options for the others, and ``tracing()``,
    the context in which Torch-Pruning builds its dependency graph."""

    model: nn.Module
    kept: dict[str, str]
    pruner: RecurrentPruner
    options: dict[str, Any]
    states_read: list[nn.Module]  # traced with their states coupled to their output

    @property
    def ignored(self) -> list[nn.Module]:
        return [self.model.get_submodule(name) for name in self.kept]

    @property
    def notes(self) -> list[str]:
        left = "; ".join(f"{name} ({why})" for name, why in self.kept.items())
        return [f"recurrent layer(s) left with all their hidden units: {left}"] if left else []

    def tracing(self) -> contextlib.AbstractContextManager[None]:
        return opaque(self.model, None, self.states_read)


def plan(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> PruningPlan:
    """Which recurrent layers' hidden units ``prune`` may remove, and how.

    A layer keeps all its units when it cannot be sliced here (``unprunable``), when the model
    gives it an initial state, or when it is bidirectional and the model reads its final states.
    A unidirectional layer whose final states are read keeps the same units in every layer
    (``RecurrentPruner.aligned``). Wherever the states are read, Torch-Pruning sees them come out
    of the layer with its output: the layers before it stay in the graph (and are pruned) and
    their readers follow the layer's units (none removed where it keeps them all).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    calls = usage(model, inputs) if layers else {}
    names = {m: n for n, m in model.named_modules()}
    kept: dict[str, str] = {}
    aligned: list[nn.Module] = []
    for rnn in layers:
        call = calls.get(rnn, LayerUse())
        reason = unprunable(rnn)
        if reason is None and call.given_state:
            reason = "the model gives it an initial state, which keeps its width"
        if reason is None and call.state_read and rnn.bidirectional:
            reason = "the model reads its final states h_n, whose rows mix the two directions"
        if reason is not None:
            kept[names[rnn]] = reason
        elif call.state_read:
            aligned.append(rnn)
    pruner = RecurrentPruner(aligned=aligned)
    options = {
        "customized_pruners": {kind: pruner for kind in {*RECURRENT, *map(type, layers)}},
        "root_module_types": [nn.modules.conv._ConvNd, nn.Linear, *RECURRENT],
        "out_channel_groups": {m: 2 for m in layers if m.bidirectional},
    }
    states_read: list[nn.Module] = [m for m in layers if calls.get(m, LayerUse()).state_read]
    return PruningPlan(model, kept, pruner, options, states_read)


# -- low-rank factorisation ---------------------------------------------------------------------

# the least share of a recurrent layer's MACs a factorised input matrix must save: the layer's
# recurrence runs step by step whatever the input's rank, and the factor is one more MatMul node.
# Measured with ONNX Runtime at batch 1, 1 thread, on the development machine: 29% of the MACs
# saved ran no faster (LSTM 40 -> 56 cells), 38-40% 1.16-1.2x, 68% 1.1x, 83% 1.8x (GRU of 912
# inputs); a layer of a few thousand MACs per step gained nothing at any share
MIN_INPUT_SAVING = 0.35
Factor = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]


class InputFactored(nn.Sequential):
    """A recurrent layer that reads a low-rank projection of its input: ``Sequential(Linear,
    layer)``, which answers for the layer's own attributes (``batch_first``, ``hidden_size``)
    as the layer does, for models that read them in their forward."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self._modules.get("1")
            if layer is None:  # while it is being built
                raise
            return getattr(layer, name)


def recurrent_macs(rnn: nn.RNNBase) -> int:
    """Multiply-accumulates per time step of every layer and direction (input and recurrence)."""
    rows = gates(rnn) * rnn.hidden_size * directions(rnn)
    widths = [rnn.input_size] + [rnn.hidden_size * directions(rnn)] * (rnn.num_layers - 1)
    return sum(rows * (width + rnn.hidden_size) for width in widths)


def factor_input(rnn: nn.RNNBase, call: LayerUse, factor: Factor) -> tuple[nn.Module | None, str]:
    """The first layer's input matrices (both directions, stacked) as a rank-r product: a
    ``Linear(input_size, r)`` that the layer then reads, ``(InputFactored(linear, layer), how)``;
    or ``(None, why not)``. The recurrent matrices are never factorised: a factorised
    recurrence is no longer an LSTM, GRU or RNN that a runtime runs as one operator."""
    if unprunable(rnn) is not None or call.given_state or call.packed:
        why = unprunable(rnn) or ("packed input" if call.packed else "an initial state is given")
        return None, f"input matrix kept ({why})"
    names = [f"weight_ih_l0{_suffix(d)}" for d in range(directions(rnn))]
    stacked = torch.cat([getattr(rnn, n).detach() for n in names])
    factors = factor(stacked)
    if factors is None:
        return None, "input matrix kept (no rank at this ratio saves parameters)"
    first, second = factors
    rank, rows = first.shape[0], stacked.shape[0]
    saving = (rows * rnn.input_size - rank * (rnn.input_size + rows)) / recurrent_macs(rnn)
    if saving < MIN_INPUT_SAVING:
        return None, (
            f"input matrix kept: rank {rank} would save {saving:.0%} of its MACs (the recurrence "
            f"dominates), under the {MIN_INPUT_SAVING:.0%} worth an extra MatMul"
        )
    layer = copy.deepcopy(rnn)
    for name, part in zip(names, second.split(rows // len(names)), strict=True):
        _set(layer, name, part)
    layer.input_size = rank
    _refresh(layer)
    projection = nn.Linear(rnn.input_size, rank, bias=False)
    with torch.no_grad():
        projection.weight.copy_(first)
    how = f"input matrix at rank {rank} ({saving:.0%} of its MACs)"
    return InputFactored(projection, layer), how


# -- int8 ---------------------------------------------------------------------------------------


def quantize_lstms(source: Path, target: Path, exclude: Sequence[str], per_channel: bool) -> bool:
    """Write ``source`` to ``target`` with its LSTM nodes (but ``exclude``) as ONNX Runtime's
    ``DynamicQuantizeLSTM``: int8 input and recurrent weights, activations quantized as it runs
    (ONNX Runtime has no static int8 LSTM). False, and nothing written, when there are none."""
    graph = onnx.load(str(source), load_external_data=False)
    if not any(n.op_type == "LSTM" and n.name not in exclude for n in graph.graph.node):
        return False
    ort_quantization.quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=["LSTM"],
        per_channel=per_channel,
        reduce_range=False,
        weight_type=ort_quantization.QuantType.QInt8,
        nodes_to_exclude=list(exclude),
    )
    return True


def quantize_notes(result: Any, mode: str) -> list[str]:
    """What the step's notes say of the recurrent operators of a quantized graph ``result``."""
    ops = Counter(n.op_type for n in result.graph.node)
    notes = []
    if ops["DynamicQuantizeLSTM"] and mode == "int8-static":
        notes.append(
            f"{ops['DynamicQuantizeLSTM']} LSTM(s) quantized dynamically (DynamicQuantizeLSTM: int8 "
            "weights, activations quantized as it runs): ONNX Runtime has no static int8 LSTM"
        )
    floats = ", ".join(f"{ops[op]} {op}" for op in ("GRU", "RNN") if ops[op])
    if floats:
        notes.append(
            f"{floats} left in float: no runtime here quantizes a GRU or a plain RNN (ONNX "
            "Runtime's int8 recurrent operator is DynamicQuantizeLSTM only, and Fulcrum has no "
            "OpenVINO target yet); the layers around them are quantized"
        )
    return notes
