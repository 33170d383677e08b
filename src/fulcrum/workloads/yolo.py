"""A YOLO-style single-stage detector in plain PyTorch, its loss and its post-processing.

The network (after YOLOX: Ge et al., 2021) is a CSP backbone, a PAN neck over strides 8, 16 and
32 and an anchor-free decoupled head. Its one raw output is ``(batch, anchors, 5 + classes)``:
per anchor point (the cell centres of the three levels, finest first) the box offsets
``dx, dy, log w, log h`` in units of the level's stride, the objectness logit and the class
logits. Decoding and NMS stay outside the network (``Postprocess``), so that the exported graph
is the network alone, as deployed detectors are timed.

The loss assigns anchors to objects with SimOTA's dynamic-k matching over the anchors whose
centre lies in an object's box or near its centre, and sums objectness and class BCE with a GIoU
and an L1 box loss. ``distill`` is the detector's distillation loss: the student learns the
teacher's objectness and class probabilities and, where the teacher is confident, its boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fulcrum.errors import DataError
from fulcrum.metrics import PAD_LABEL

STRIDES = (8, 16, 32)
PRIOR = 0.01  # the initial objectness and class probability (a stable start; RetinaNet's)


def conv(c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv, batch norm, ReLU (which ONNX Runtime fuses into its int8 convolutions)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(conv(channels, channels, 1), conv(channels, channels, 3))
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.shortcut else y


class CSP(nn.Module):
    """Cross-stage partial block: half the channels go through ``depth`` bottlenecks, half
    around them, and a 1x1 convolution fuses both."""

    def __init__(self, c_in: int, c_out: int, depth: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = c_out // 2
        self.main, self.side = conv(c_in, hidden), conv(c_in, hidden)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(depth)))
        self.fuse = conv(2 * hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.blocks(self.main(x)), self.side(x)], dim=1))


class Backbone(nn.Module):
    """Five stride-2 stages; the last three give the features of strides 8, 16 and 32."""

    def __init__(self, channels: int, width: int, depth: int) -> None:
        super().__init__()
        w = width
        self.stem = conv(channels, w, 3, 2)
        self.stage2 = nn.Sequential(conv(w, 2 * w, 3, 2), CSP(2 * w, 2 * w, depth))
        self.stage3 = nn.Sequential(conv(2 * w, 4 * w, 3, 2), CSP(4 * w, 4 * w, 2 * depth))
        self.stage4 = nn.Sequential(conv(4 * w, 8 * w, 3, 2), CSP(8 * w, 8 * w, 2 * depth))
        self.stage5 = nn.Sequential(conv(8 * w, 16 * w, 3, 2), CSP(16 * w, 16 * w, depth))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage3(self.stage2(self.stem(x)))
        c4 = self.stage4(c3)
        return c3, c4, self.stage5(c4)


class Neck(nn.Module):
    """PAN: a top-down path (upsampling) then a bottom-up path (stride-2 convolutions)."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        w = width
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral5, self.top4 = conv(16 * w, 8 * w), CSP(16 * w, 8 * w, depth, False)
        self.lateral4, self.top3 = conv(8 * w, 4 * w), CSP(8 * w, 4 * w, depth, False)
        self.down3, self.bottom4 = conv(4 * w, 4 * w, 3, 2), CSP(8 * w, 8 * w, depth, False)
        self.down4, self.bottom5 = conv(8 * w, 8 * w, 3, 2), CSP(16 * w, 16 * w, depth, False)

    def forward(
        self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        l5 = self.lateral5(c5)
        l4 = self.lateral4(self.top4(torch.cat([self.up(l5), c4], dim=1)))
        p3 = self.top3(torch.cat([self.up(l4), c3], dim=1))
        p4 = self.bottom4(torch.cat([self.down3(p3), l4], dim=1))
        p5 = self.bottom5(torch.cat([self.down4(p4), l5], dim=1))
        return p3, p4, p5


class Level(nn.Module):
    """The decoupled head of one level: a class branch and a box branch (with objectness)."""

    def __init__(self, c_in: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.stem = conv(c_in, hidden)
        self.cls_branch = nn.Sequential(conv(hidden, hidden, 3), conv(hidden, hidden, 3))
        self.box_branch = nn.Sequential(conv(hidden, hidden, 3), conv(hidden, hidden, 3))
        self.box_pred = nn.Conv2d(hidden, 4, 1)
        self.obj_pred = nn.Conv2d(hidden, 1, 1)
        self.cls_pred = nn.Conv2d(hidden, num_classes, 1)
        with torch.no_grad():
            for bias in (self.obj_pred.bias, self.cls_pred.bias):
                if bias is not None:
                    bias.fill_(-math.log((1 - PRIOR) / PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        box = self.box_branch(x)
        out = torch.cat(
            [self.box_pred(box), self.obj_pred(box), self.cls_pred(self.cls_branch(x))], 1
        )
        return out.flatten(2)  # (batch, 5 + classes, cells)


class Head(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        hidden = 4 * width
        self.levels = nn.ModuleList(Level(c * width, hidden, num_classes) for c in (4, 8, 16))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        outs = [level(x) for level, x in zip(self.levels, features, strict=True)]
        return torch.cat(outs, dim=2).permute(0, 2, 1)  # (batch, anchors, 5 + classes)


class Detector(nn.Module):
    """The detector: ``width`` channels after the stem (doubling per stage), ``depth`` CSP
    bottlenecks per block (twice that in the middle stages)."""

    def __init__(
        self, num_classes: int = 10, channels: int = 1, width: int = 24, depth: int = 1
    ) -> None:
        super().__init__()
        self.backbone = Backbone(channels, width, depth)
        self.neck = Neck(width, depth)
        self.head = Head(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(*self.backbone(x)))


def prediction_layers(model: nn.Module) -> list[str]:
    """The names of the layers that write the raw output: their widths are the output layout."""
    return [n for n, _ in model.named_modules() if n.endswith(("box_pred", "obj_pred", "cls_pred"))]


# ---- boxes


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), boxes x1 y1 x2 y2."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter).clamp(min=1e-9)


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matching rows of ``a`` and ``b`` (N, 4)."""
    top_left, bottom_right = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = (box_area(a) + box_area(b) - inter).clamp(min=1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1)
    return inter / union - (hull - union) / hull.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    order = scores.argsort(descending=True)
    overlaps = box_iou(boxes[order], boxes[order])
    remaining = torch.arange(len(order))
    kept = []
    while len(remaining):
        best = remaining[0]
        kept.append(best)
        remaining = remaining[1:][overlaps[best, remaining[1:]] <= threshold]
    return order[torch.stack(kept)] if kept else order[:0]


def anchor_points(
    size: tuple[int, int], strides: Sequence[int] = STRIDES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchor points (A, 2) as x, y pixel centres of every level's cells, and their strides."""
    points, steps = [], []
    for s in strides:
        rows, cols = math.ceil(size[0] / s), math.ceil(size[1] / s)
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        points.append(torch.stack([x, y], -1).reshape(-1, 2).float().add(0.5).mul(s))
        steps.append(torch.full((rows * cols,), float(s)))
    return torch.cat(points), torch.cat(steps)


def decode(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Boxes x1 y1 x2 y2 in pixels from raw box outputs (..., A, >=4)."""
    if raw.shape[-2] != len(points):
        raise DataError(
            f"the detector gave {raw.shape[-2]} anchors but the image size and strides make "
            f"{len(points)}: the model's input size must be the one its loss and post-processing "
            "decode for."
        )
    s = strides[:, None]
    centre = points + raw[..., :2] * s
    half = torch.exp(raw[..., 2:4].clamp(max=8.0)) * s / 2
    return torch.cat([centre - half, centre + half], dim=-1)


# ---- loss


class Loss:
    """The detector's training loss on raw outputs and ``(batch, M, 5)`` padded targets, and its
    distillation loss (``distill``), for images of ``size`` (height, width)."""

    def __init__(
        self, size: tuple[int, int], num_classes: int, strides: Sequence[int] = STRIDES
    ) -> None:
        self.size, self.num_classes = (int(size[0]), int(size[1])), num_classes
        self.strides = tuple(strides)
        self.points, self.steps = anchor_points(self.size, self.strides)

    def __repr__(self) -> str:
        return f"yolo.Loss(size={self.size}, num_classes={self.num_classes})"

    def __call__(self, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        boxes = decode(raw, self.points, self.steps)
        labels = targets[..., 4]
        if bool((labels >= self.num_classes).any()) or bool((labels < PAD_LABEL).any()):
            raise DataError(
                f"detection targets hold label {float(labels.max()):g}; labels must be in "
                f"[0, {self.num_classes}) (-1 marks padding): relabel the data."
            )
        found = [
            self.assign(raw[b].detach(), boxes[b].detach(), targets[b]) for b in range(len(raw))
        ]
        objectness = torch.zeros_like(raw[..., 4])
        chosen, truth, classes, weight = [], [], [], []
        for b, (fg, gt, iou) in enumerate(found):
            objectness[b, fg] = 1.0
            chosen.append(fg + b * raw.shape[1])
            truth.append(targets[b, gt, :4])
            classes.append(F.one_hot(targets[b, gt, 4].long(), self.num_classes) * iou[:, None])
            weight.append(self.steps[fg])
        fg = torch.cat(chosen)
        count = max(len(fg), 1)
        flat, flat_boxes = raw.reshape(-1, raw.shape[-1]), boxes.reshape(-1, 4)
        loss = F.binary_cross_entropy_with_logits(raw[..., 4], objectness, reduction="sum")
        if len(fg):
            gt_boxes, stride = torch.cat(truth), torch.cat(weight)[:, None]
            loss = loss + F.binary_cross_entropy_with_logits(
                flat[fg, 5:], torch.cat(classes).to(raw.dtype), reduction="sum"
            )
            loss = loss + 5.0 * (1.0 - giou(flat_boxes[fg], gt_boxes)).sum()
            loss = loss + ((flat_boxes[fg] - gt_boxes).abs() / stride).sum()
        return loss / count

    def assign(
        self, raw: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SimOTA for one image: the foreground anchors, the target row each one is matched to,
        and the IoU of its predicted box with that object."""
        rows = torch.nonzero(targets[:, 4] != PAD_LABEL).squeeze(1)
        truth = targets[rows]
        empty = torch.zeros(0, dtype=torch.long)
        if not len(truth):
            return empty, empty, torch.zeros(0)
        x, y = self.points[:, 0], self.points[:, 1]
        gt = truth[:, :4]
        inside = (x > gt[:, :1]) & (x < gt[:, 2:3]) & (y > gt[:, 1:2]) & (y < gt[:, 3:4])
        radius = 2.5 * self.steps
        centre = (gt[:, :2] + gt[:, 2:]) / 2
        near = ((x - centre[:, :1]).abs() < radius) & ((y - centre[:, 1:]).abs() < radius)
        candidates = torch.nonzero((inside | near).any(0)).squeeze(1)
        if not len(candidates):
            return empty, empty, torch.zeros(0)
        iou = box_iou(gt, boxes[candidates])
        probability = (raw[candidates, 5:].sigmoid() * raw[candidates, 4:5].sigmoid()).sqrt()
        one_hot = F.one_hot(truth[:, 4].long(), self.num_classes).to(raw.dtype)
        class_cost = F.binary_cross_entropy(
            probability[None].expand(len(gt), -1, -1).clamp(1e-6, 1 - 1e-6),
            one_hot[:, None].expand(-1, len(candidates), -1),
            reduction="none",
        ).sum(-1)
        both = (inside & near)[:, candidates]
        cost = class_cost - 3.0 * torch.log(iou + 1e-8) + 1e5 * (~both)
        k = iou.topk(min(10, len(candidates)), dim=1).values.sum(1).int().clamp(min=1)
        matched = cost.argsort(1).argsort(1) < k[:, None]  # each object's k cheapest anchors
        shared = matched.sum(0) > 1  # an anchor two objects chose goes to the cheaper one
        if shared.any():
            matched[:, shared] = False
            matched[cost[:, shared].argmin(0), torch.nonzero(shared).squeeze(1)] = True
        foreground = matched.any(0)
        owner = matched[:, foreground].float().argmax(0)
        chosen = torch.nonzero(foreground).squeeze(1)
        return candidates[foreground], rows[owner], iou[owner, chosen]

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The student's distance to the teacher: objectness and class probabilities as soft
        BCE targets, and boxes (GIoU, L1 in strides) weighted by the teacher's confidence."""
        teacher = teacher.detach()
        objectness = F.binary_cross_entropy_with_logits(
            student[..., 4], teacher[..., 4].sigmoid(), reduction="none"
        )
        confidence = teacher[..., 4].sigmoid() * teacher[..., 5:].sigmoid().amax(-1)
        weight = confidence.reshape(-1)
        total = weight.sum().clamp(min=1.0)
        classes = F.binary_cross_entropy_with_logits(
            student[..., 5:], teacher[..., 5:].sigmoid(), reduction="none"
        ).sum(-1)
        ours = decode(student, self.points, self.steps).reshape(-1, 4)
        theirs = decode(teacher, self.points, self.steps).reshape(-1, 4)
        box = 5.0 * (1.0 - giou(ours, theirs)) + (
            (ours - theirs).abs().sum(-1) / self.steps.repeat(len(student))
        )
        return (
            objectness.sum() + (classes.reshape(-1) * weight).sum() + (box * weight).sum()
        ) / total


# ---- post-processing


class Postprocess:
    """Raw outputs to detections: decoded boxes clipped to the image, score = objectness x best
    class probability, boxes under ``threshold`` dropped, class-wise NMS at ``iou``, at most
    ``limit`` per image (COCO's 100)."""

    def __init__(
        self,
        strides: Sequence[int] = STRIDES,
        threshold: float = 0.001,
        iou: float = 0.65,
        limit: int = 100,
    ) -> None:
        self.strides, self.threshold, self.iou, self.limit = tuple(strides), threshold, iou, limit

    def __repr__(self) -> str:
        return (
            f"yolo.Postprocess(strides={self.strides}, threshold={self.threshold}, iou={self.iou})"
        )

    def __call__(
        self, raw: torch.Tensor, image_sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        found = []
        grids: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for output, (height, width) in zip(raw.float(), image_sizes.tolist(), strict=True):
            if (height, width) not in grids:
                grids[height, width] = anchor_points((height, width), self.strides)
            points, steps = grids[height, width]
            boxes = decode(output, points, steps)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            scores, labels = (output[:, 5:].sigmoid() * output[:, 4:5].sigmoid()).max(-1)
            kept = torch.nonzero(scores > self.threshold).squeeze(1)
            boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
            # one NMS for all classes: each class's boxes moved apart so that they never overlap
            offset = labels[:, None].float() * (max(height, width) + 1)
            kept = nms(boxes + offset, scores, self.iou)[: self.limit]
            found.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return found
