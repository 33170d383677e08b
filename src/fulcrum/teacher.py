"""What a student learns from its teacher: soft targets, hidden states (TinyBERT), and the
teacher's outputs computed once per example and reused across epochs (``TeacherMemo``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fulcrum.runtimes import output_tensor

log = logging.getLogger(__name__)


def soft_loss(
    task: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """How far the student's outputs are from the teacher's (Hinton et al. for classifiers)."""
    if task == "multiclass" or (task == "binary" and student.ndim == 2 and student.shape[1] > 1):
        t = temperature
        return nn.functional.kl_div(
            nn.functional.log_softmax(student / t, dim=-1),
            nn.functional.softmax(teacher / t, dim=-1),
            reduction="batchmean",
        ) * (t * t)
    if task == "binary":
        target = torch.sigmoid(teacher.reshape(-1) / temperature)
        return nn.functional.binary_cross_entropy_with_logits(
            student.reshape(-1) / temperature, target
        ) * (temperature * temperature)
    if task == "embedding":  # judged by cosine: learn the direction, and the length too
        cosine = nn.functional.cosine_similarity(student, teacher, dim=-1)
        return (1.0 - cosine).mean() + nn.functional.mse_loss(student, teacher)
    return nn.functional.mse_loss(student, teacher)


@dataclass(frozen=True)
class HiddenMatch:
    """TinyBERT's hidden-state loss: student encoder layer ``s`` learns the output of teacher
    layer ``t`` for each ``(s, t)`` in ``pairs``, through a learned projection where widths
    differ; ``weight`` scales it against the output loss."""

    pairs: tuple[tuple[int, int], ...]
    weight: float = 1.0


@contextlib.contextmanager
def layer_outputs(model: nn.Module, wanted: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """While open, the dict holds the outputs of ``model``'s encoder layers ``wanted`` from its
    latest forward pass."""
    from fulcrum.techniques.layers import encoder_layers

    seen: dict[int, torch.Tensor] = {}
    if not wanted:
        yield seen
        return
    holder, attribute = encoder_layers(model)
    stack = getattr(holder, attribute)
    hooks = [
        stack[i].register_forward_hook(
            lambda _m, _a, out, i=i: seen.__setitem__(i, output_tensor(out))
        )
        for i in wanted
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


# the teacher's outputs kept for reuse: on CPython's 10k sentences, the output and two of
# all-MiniLM-L6-v2's layers are about 0.8 GB
TEACHER_MEMO_BYTES = 4 << 30


class TeacherMemo:
    """The teacher's output, and the outputs of its encoder layers ``layers``, for a batch:
    computed once per training example and taken from memory when the example comes again in a
    later epoch (in another batch, padded to another length), up to ``limit`` bytes.

    Distilling a 2-layer student of all-MiniLM-L6-v2, the teacher's forward pass was half of
    each training step (149 of 300 ms per batch of 32). An example is known by its inputs
    (the real tokens only, where an attention mask says which), so reuse needs no index from
    the data loader; a batch with any example not yet seen is computed whole.
    """

    def __init__(self, teacher: nn.Module, layers: list[int], limit: int) -> None:
        self.teacher, self.layers, self.limit = teacher, layers, limit
        self.size = 0
        self.seen: dict[bytes, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}

    def __call__(
        self, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        if not self.limit:  # nothing kept: no keys to make on every step
            return self._run(inputs)
        mask = token_mask(inputs)
        real = [None] * len(inputs[0]) if mask is None else mask.bool()
        keys = [self._key(inputs, i, real[i]) for i in range(len(inputs[0]))]
        if all(k in self.seen for k in keys):
            rows = [self.seen[k] for k in keys]
            output = torch.stack([r[0] for r in rows])
            hidden = {}
            for j, layer in enumerate(self.layers):
                width = rows[0][1][j].shape[-1]
                if mask is None:
                    hidden[layer] = torch.stack([r[1][j] for r in rows])
                    continue
                hidden[layer] = torch.zeros((*mask.shape, width), dtype=rows[0][1][j].dtype)
                for i, r in enumerate(rows):
                    hidden[layer][i, real[i]] = r[1][j]
            return output, hidden
        output, found = self._run(inputs)
        for i, key in enumerate(keys):
            if self.size >= self.limit or key in self.seen:
                continue
            layers = tuple(
                (found[t][i] if mask is None else found[t][i, real[i]]).clone() for t in self.layers
            )
            self.seen[key] = (output[i].clone(), layers)
            self.size += len(key) + sum(t.nbytes for t in (output[i], *layers))
        return output, found

    def _run(
        self, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        with torch.no_grad(), layer_outputs(self.teacher, self.layers) as theirs:
            output = output_tensor(self.teacher(*inputs))
        return output, {t: theirs[t] for t in self.layers}

    @staticmethod
    def _key(inputs: tuple[torch.Tensor, ...], row: int, real: torch.Tensor | None) -> bytes:
        parts = []
        for x in inputs:
            part = x[row]
            if real is not None and part.shape == real.shape:
                part = part[real]
            parts.append(part.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return b"\x00".join(parts)


def hidden_distance(
    student: torch.Tensor, teacher: torch.Tensor, inputs: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Mean squared distance of two layers' outputs ``(batch, tokens, width)`` over the real
    tokens only: padding is told by the attention mask among the inputs (integer 0/1, shaped
    ``(batch, tokens)``). Padded positions hold whatever the layer computed for them; matching
    them spent most of the loss on short sentences padded to a batch's longest."""
    distance = (student - teacher).pow(2).mean(-1)
    mask = token_mask(inputs)
    if mask is not None and mask.shape == distance.shape:
        weight = mask.to(distance.dtype)
        return (distance * weight).sum() / weight.sum()
    return distance.mean()


def token_mask(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The attention mask among a model's inputs, if any: when the first input is token ids
    ``(batch, tokens)``, a later integer 0/1 tensor of the same shape with some ones."""
    if inputs[0].ndim != 2 or inputs[0].is_floating_point():
        return None
    for mask in inputs[1:]:
        if (
            mask.shape == inputs[0].shape
            and not mask.is_floating_point()
            and bool(((mask == 0) | (mask == 1)).all())
            and bool(mask.any())
        ):
            return mask
    return None


def projections_for(
    student: nn.Module, teacher: nn.Module, hidden: HiddenMatch, inputs: tuple[torch.Tensor, ...]
) -> nn.ModuleList:
    """One projection per matched layer pair: identity where widths agree, else a learned Linear
    (TinyBERT's W_h) from the student's width to the teacher's."""
    with (
        torch.no_grad(),
        layer_outputs(student, [s for s, _ in hidden.pairs]) as mine,
        layer_outputs(teacher, [t for _, t in hidden.pairs]) as theirs,
    ):
        student(*inputs)
        teacher(*inputs)
    widths = [(mine[s].shape[-1], theirs[t].shape[-1]) for s, t in hidden.pairs]
    return nn.ModuleList(
        nn.Identity() if a == b else nn.Linear(a, b, bias=False) for a, b in widths
    )
