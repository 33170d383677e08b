"""The detection task on a tiny detector and a handful of generated scenes: COCO mAP, the output
layout through every technique, ONNX Runtime, recovery training, bad input, and a user's TOML."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch import nn

from fulcrum.compression import compress
from fulcrum.errors import ConfigError, DataError
from fulcrum.evaluation import evaluate, evaluate_workload
from fulcrum.metrics import detection_metrics
from fulcrum.runtimes import OnnxModel, exported_bytes, torch_threads
from fulcrum.train import TaskFunctions, fit
from fulcrum.workloads import Workload, detection, yolo
from fulcrum.workloads.base import to_loader


@pytest.fixture(scope="module")
def tiny() -> Iterator[Workload]:
    """The built-in at its tiny size, its detector then overfitted on the validation scenes, so
    that its mAP is far from 0 (a few seconds on one thread)."""
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setattr(detection, "SETTINGS", detection.TINY)
        workload = detection.build()
        functions = TaskFunctions(workload.loss, workload.distill_loss, workload.postprocess)
        model = fit(
            workload.model, workload.val, "detection", epochs=40, lr=1e-2, functions=functions
        )
        yield replace(workload, model=model)


@pytest.fixture(scope="module")
def baseline(tiny: Workload) -> float:
    value = evaluate_workload(tiny, threads=1).metrics["map"]
    assert value is not None and value > 0.1
    return value


def random_predictions(targets: list[np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    """Each target box jittered (some dropped, some false alarms added), scores at random."""
    rng = np.random.default_rng(seed)
    found = []
    for rows in targets:
        boxes = rows[:, :4] + rng.normal(0, 3, (len(rows), 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = rows[:, 4].copy()
        labels[rng.random(len(rows)) < 0.2] = rng.integers(0, 10)
        alarms = rng.uniform(0, 40, (2, 2))
        boxes = np.concatenate([boxes, np.hstack([alarms, alarms + 20])])
        labels = np.concatenate([labels, rng.integers(0, 10, 2)])
        found.append({"boxes": boxes, "scores": rng.random(len(boxes)), "labels": labels})
    return found


def some_targets(seed: int, images: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = []
    for _ in range(images):
        corner = rng.uniform(0, 60, (3, 2))
        side = rng.uniform(8, 40, (3, 2))
        rows = np.hstack([corner, corner + side, rng.integers(0, 10, (3, 1))])
        targets.append(rows)
    return targets


def test_map_equals_the_coco_libraries_own_on_the_same_predictions():
    targets = some_targets(0)
    predictions = random_predictions(targets, 1)
    ours = detection_metrics(targets, predictions, num_classes=10)
    images = [{"id": i + 1} for i in range(len(targets))]
    annotations, results = [], []
    for i, (rows, found) in enumerate(zip(targets, predictions, strict=True)):
        for x1, y1, x2, y2, label in rows:
            box = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        for (x1, y1, x2, y2), score, label in zip(
            found["boxes"], found["scores"], found["labels"], strict=True
        ):
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    truth = COCO(
        {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1} for c in range(10)],
        }
    )
    library = COCOeval_faster(truth, truth.loadRes(results), "bbox")
    library.run()
    assert 0.05 < library.stats[0] < 0.95  # neither trivial nor perfect
    for name, index in (("map", 0), ("map_50", 1), ("map_75", 2), ("map_small", 3)):
        assert ours.metrics[name] == pytest.approx(library.stats[index], abs=1e-12)
    assert ours.metrics["mar_100"] == pytest.approx(library.stats[8], abs=1e-12)
    assert ours.metrics["map_large"] is None  # no box of 96x96 pixels or more
    assert any("map_large undefined" in note for note in ours.notes)


def test_a_perfect_prediction_scores_one_and_a_shifted_one_less():
    targets = some_targets(2)

    def shifted(pixels: float) -> list[dict[str, np.ndarray]]:
        return [
            {"boxes": rows[:, :4] + pixels, "scores": np.ones(len(rows)), "labels": rows[:, 4]}
            for rows in targets
        ]

    perfect = detection_metrics(targets, shifted(0.0), num_classes=10).metrics
    assert perfect["map"] == pytest.approx(1.0) and perfect["map_50"] == pytest.approx(1.0)
    near = detection_metrics(targets, shifted(2.0), num_classes=10).metrics["map"]
    far = detection_metrics(targets, shifted(60.0), num_classes=10).metrics["map"]
    assert 0.0 < near < 1.0
    assert far == 0.0


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class_only():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]], dtype=torch.float)
    kept = yolo.nms(boxes, torch.tensor([0.5, 0.9, 0.3]), 0.5)
    assert kept.tolist() == [1, 2]
    # the post-processing suppresses within a class: the same two boxes of two classes both stay
    raw = torch.full((1, 189, 15), -10.0)
    raw[0, :2, :2] = 0.0  # two anchors' boxes centred on them, at (4, 4) and (12, 4),
    raw[0, :2, 2:4] = 2.0  # exp(2) * 8 = 59 pixels wide: clipped to the image, IoU 0.81
    raw[0, :2, 4] = 10.0  # both confident
    raw[0, 0, 5], raw[0, 1, 5] = 10.0, 9.0
    same = yolo.Postprocess()(raw, torch.tensor([[96, 96]]))[0]
    assert same["labels"].tolist() == [0]
    raw[0, 1, 5], raw[0, 1, 6] = -10.0, 9.0
    both = yolo.Postprocess()(raw, torch.tensor([[96, 96]]))[0]
    assert sorted(both["labels"].tolist()) == [0, 1]


def test_scenes_are_seeded_inside_the_image_and_from_unseen_glyphs():
    settings = detection.TINY
    train, val = detection.glyphs(0)
    assert not set(map(bytes, train.images)) & set(map(bytes, val.images))
    x1, y1 = detection.scenes(val, 4, settings, 5)
    x2, y2 = detection.scenes(val, 4, settings, 5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 1, settings.size, settings.size)
    boxes = y1[y1[..., 4] >= 0]
    assert len(boxes) >= 4 and boxes[:, 4].max() < 10
    assert bool((boxes[:, :2] >= 0).all()) and bool((boxes[:, 2:4] <= settings.size).all())
    assert bool((boxes[:, 2] > boxes[:, 0]).all()) and bool((boxes[:, 3] > boxes[:, 1]).all())


@pytest.mark.parametrize(
    "recipe",
    ["prune:0.3", "prune:ratio=0.3,importance=taylor", "lowrank:0.25", "quantize:int8-static"],
)
def test_each_technique_keeps_the_output_layout(tiny, baseline, recipe):
    candidate = compress(tiny.model, recipe, tiny, threads=1)
    inputs = tiny.example_inputs
    expected = tiny.model(*inputs).shape
    if candidate.onnx is not None:
        out = OnnxModel(candidate.onnx, threads=1)(*inputs)
        deployed = OnnxModel(candidate.onnx, threads=1)
    else:
        assert candidate.model is not None
        out = candidate.model(*inputs)
        deployed = candidate.model
    assert out.shape == expected
    if recipe.startswith("prune"):  # pruned: smaller, but every prediction layer kept its width
        model = candidate.model
        assert model is not None
        assert sum(p.numel() for p in model.parameters()) < 0.9 * sum(
            p.numel() for p in tiny.model.parameters()
        )
        for name in yolo.prediction_layers(tiny.model):
            before, after = tiny.model.get_submodule(name), model.get_submodule(name)
            assert after.out_channels == before.out_channels
    assert evaluate_workload(tiny, deployed, threads=1).metrics["map"] is not None


class PredictionsFirst(nn.Module):
    """A one-level, coupled-head detector (YOLOv3's kind) whose raw output is its prediction map
    (batch, 5 + classes, h, w), with its prediction layer defined before its body: the last layer
    defined is the body's, so the classifier-head rule would not protect the prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = nn.Conv2d(16, 5 + detection.NUM_CLASSES, 1)
        self.body = nn.Sequential(yolo.conv(1, 16, 3, 2), yolo.conv(16, 16, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(self.body(x))


def test_pruning_keeps_every_prediction_layer_whatever_order_they_are_defined_in(tiny):
    model = PredictionsFirst().eval()
    candidate = compress(model, "prune:ratio=0.5,round_to=1", replace(tiny, model=model), threads=1)
    assert candidate.model is not None
    assert candidate.model.body[0][0].out_channels < 16  # pruned
    inputs = tiny.example_inputs
    assert candidate.model(*inputs).shape == model(*inputs).shape


def test_onnx_runtime_gives_the_same_map_as_pytorch(tiny, baseline):
    session = OnnxModel(exported_bytes(tiny.model, tiny.example_inputs), threads=1)
    assert evaluate_workload(tiny, session, threads=1).metrics["map"] == pytest.approx(
        baseline, abs=2e-3
    )


def test_recovery_training_uses_the_workloads_loss_and_distillation_loss(tiny):
    calls = {"loss": 0, "distill": 0}
    loss = yolo.Loss((detection.TINY.size,) * 2, detection.NUM_CLASSES)

    def counted(name, fn):
        def call(*args):
            calls[name] += 1
            return fn(*args)

        return call

    workload = replace(
        tiny, loss=counted("loss", loss), distill_loss=counted("distill", loss.distill)
    )
    candidate = compress(tiny.model, "prune:0.3 > distill:epochs=1,alpha=0.5", workload, threads=1)
    assert calls["distill"] == calls["loss"] > 0  # each step: both, mixed by alpha
    assert candidate.model is not None
    assert candidate.model(*tiny.example_inputs).shape == tiny.model(*tiny.example_inputs).shape
    with pytest.raises(ConfigError, match="augment=noise"):
        functions = TaskFunctions(tiny.loss, tiny.distill_loss, tiny.postprocess)
        fit(tiny.model, tiny.train, "detection", epochs=1, augment="shift", functions=functions)


def test_loss_assigns_anchors_inside_or_near_each_object():
    loss = yolo.Loss((96, 96), 10)
    targets = torch.full((6, 5), -1.0)
    targets[2] = torch.tensor([20.0, 30.0, 44.0, 62.0, 3.0])  # after a padding row or two
    raw = torch.zeros(189, 15)
    foreground, owner, _ = loss.assign(raw, yolo.decode(raw, loss.points, loss.steps), targets)
    assert len(foreground) >= 1 and owner.tolist() == [2] * len(foreground)
    centres = loss.points[foreground]
    assert bool(((centres[:, 0] - 32).abs() < 2.5 * loss.steps[foreground]).all())
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        bad = targets.clone()
        bad[2, 4] = 10
        loss(raw[None], bad[None])


def one_batch(rows: list[list[float]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    target = torch.full((1, 3, 5), -1.0)
    target[0, : len(rows)] = torch.tensor(rows)
    return [(torch.zeros(1, 1, 64, 64), target)]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[10, 10, 70, 30, 1]], "outside its 64x64 image"),
        ([[-2, 10, 30, 30, 1]], "outside its 64x64 image"),
        ([[30, 10, 20, 30, 1]], "x2 <= x1"),
        ([[10, 10, 30, 30, 12]], r"label 12.*\[0, 10\)"),
        ([[10, 10, 30, 30, 1.5]], "whole numbers"),
    ],
)
def test_bad_targets_are_refused_with_the_fix(tiny, rows, match):
    with pytest.raises(DataError, match=match) as info:
        evaluate(
            tiny.model, one_batch(rows), "detection", num_classes=10, postprocess=tiny.postprocess
        )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("found", "match"),
    [
        (lambda raw, sizes: {"boxes": torch.zeros(0, 4)}, "got a dict"),
        (lambda raw, sizes: [], "got a list of 0"),
        (lambda raw, sizes: [{"boxes": torch.zeros(2, 4)}], r"keys \['boxes'\]"),
        (
            lambda raw, sizes: [
                {"boxes": torch.zeros(2, 4), "scores": torch.zeros(3), "labels": torch.zeros(2)}
            ],
            r"boxes \(2, 4\), scores \(3,\)",
        ),
        (
            lambda raw, sizes: [
                {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([11])}
            ],
            "label 11",
        ),
    ],
)
def test_a_postprocess_off_the_convention_is_refused_saying_what_it_found(tiny, found, match):
    with pytest.raises(DataError, match=match):
        evaluate(
            tiny.model,
            one_batch([[10, 10, 30, 30, 1]]),
            "detection",
            num_classes=10,
            postprocess=found,
        )


def test_an_image_without_a_boxes_entry_is_refused():
    images = torch.zeros(2, 1, 64, 64)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}, {"labels": torch.ones(1)}]
    loader = to_loader((images, targets), "val", task="detection")
    with pytest.raises(DataError, match="no 'boxes' entry"):
        next(iter(loader))


def test_a_detection_workload_needs_its_postprocess(tiny):
    with pytest.raises(ConfigError, match="post-processing"):
        replace(tiny, postprocess=None)


USER_DETECTOR = textwrap.dedent(
    """
    import torch
    from fulcrum.workloads import detection, yolo


    def make_model():
        torch.manual_seed(0)
        return yolo.Detector(num_classes=10, channels=1, width=4)


    def splits():
        train, val = detection.glyphs(0)
        images, rows = detection.scenes(val, 6, detection.TINY, 0)
        targets = []
        for image_rows in rows:
            real = image_rows[image_rows[:, 4] >= 0]
            targets.append({"boxes": real[:, :4], "labels": real[:, 4].long()})
        return {"val": (images, targets), "train": (images, targets)}


    def missing():
        data = splits()
        images, targets = data["val"]
        targets[3] = {"labels": targets[3]["labels"]}
        return {"val": (images, targets)}


    decode = yolo.Postprocess()


    def broken(raw, sizes):
        return [(d["boxes"], d["scores"]) for d in decode(raw, sizes)]
    """
)


@pytest.fixture
def detector_dir(tmp_path: Path) -> Path:
    (tmp_path / "userdet.py").write_text(USER_DETECTOR)
    base = 'task = "detection"\nmodel = "userdet:make_model"\nnum_classes = 10\n'
    (tmp_path / "det.toml").write_text(
        base + 'data = "userdet:splits"\npostprocess = "userdet:decode"\n'
    )
    (tmp_path / "missing.toml").write_text(
        base + 'data = "userdet:missing"\npostprocess = "userdet:decode"\n'
    )
    (tmp_path / "broken.toml").write_text(
        base + 'data = "userdet:splits"\npostprocess = "userdet:broken"\n'
    )
    (tmp_path / "none.toml").write_text(base + 'data = "userdet:splits"\n')
    return tmp_path


def fulcrum_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fulcrum", *args, "--threads", "1"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_users_toml_detector_is_evaluated_and_bad_ones_are_refused(detector_dir):
    from fulcrum.workloads import load

    workload = load(str(detector_dir / "det.toml"))
    assert workload.task == "detection" and workload.postprocess is not None
    result = evaluate_workload(workload, threads=1)
    assert result.n_samples == 6 and result.metrics["map"] is not None
    with pytest.raises(DataError, match="image 0 got tuple"):
        evaluate_workload(load(str(detector_dir / "broken.toml")), threads=1)
    with pytest.raises(ConfigError, match="postprocess = 'module:callable'"):
        load(str(detector_dir / "none.toml"))
    done = fulcrum_cli("evaluate", "missing.toml", cwd=detector_dir)  # the command line's way
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "no 'boxes' entry" in lines[0], done.stderr
