"""The vision built-ins' parts at reduced sizes: no full model is trained here."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fulcrum.compression import compress
from fulcrum.measure import count_compute, parameter_counts
from fulcrum.workloads import Workload, builtin, describe, vision
from fulcrum.workloads.builtin import loaders
from fulcrum.workloads.mobilenet import InvertedResidual, mobilenet_v2
from fulcrum.workloads.resnet18 import resnet18
from fulcrum.workloads.vision import NOISE, Augmented, Digits32, augment, digits_32


@pytest.fixture(scope="module")
def digits() -> Digits32:
    return digits_32(seed=0)


def test_full_resnet18_has_the_cifar_size_and_compute():
    model = resnet18()
    macs, _, _, counted_on = count_compute(model, (torch.zeros(1, 3, 32, 32),))
    assert counted_on == "meta"
    assert parameter_counts(model)[0] == pytest.approx(11.17e6, rel=0.01)
    assert macs == pytest.approx(0.56e9, rel=0.01)


def test_narrow_resnet18_classifies_and_shrinks_with_width():
    model = resnet18(width=8).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 6  # three downsampling blocks: a 3x3 conv and a 1x1 shortcut each
    assert parameter_counts(model)[0] < parameter_counts(resnet18(width=16))[0] / 3


def test_mobilenet_uses_depthwise_convs_and_gives_ten_scores():
    model = mobilenet_v2(width_mult=0.25).eval()
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 17  # one depthwise conv per inverted residual block
    assert all(
        m.groups == m.in_channels == m.out_channels and m.kernel_size == (3, 3) for m in grouped
    )
    activations = [m for m in model.modules() if isinstance(m, nn.ReLU | nn.ReLU6)]
    assert activations and all(isinstance(m, nn.ReLU6) for m in activations)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert all(isinstance(b.block[-1], nn.BatchNorm2d) for b in blocks)  # linear bottlenecks
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_digits_are_32x32_normalised_and_split_by_class(digits):
    x_train, y_train, x_val, y_val, background = digits
    assert x_train.shape == (1437, 3, 32, 32) and x_val.shape == (360, 3, 32, 32)
    assert float(x_train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert float(x_train.min()) == pytest.approx(background)
    train_counts, val_counts = np.bincount(y_train.numpy()), np.bincount(y_val.numpy())
    expected = (train_counts + val_counts) * 0.2
    assert np.all(np.abs(val_counts - expected) <= 1)  # stratified: every class in proportion


def test_augmentation_keeps_shape_and_background_and_repeats_for_a_seed(digits):
    x, fill = digits.x_train[:16], digits.background

    def draw(seed: int) -> torch.Tensor:
        return augment(x, torch.Generator().manual_seed(seed), fill=fill)

    first = draw(0)
    assert first.shape == x.shape
    assert torch.equal(first, draw(0))
    assert not torch.allclose(first, draw(1), atol=0.5)
    blank = torch.full((4, 3, 32, 32), fill)
    noise = augment(blank, torch.Generator().manual_seed(0), fill=fill) - fill
    assert float(noise.std()) == pytest.approx(NOISE, rel=0.1)  # uncovered pixels stay background


@pytest.mark.parametrize("kind", ["MAX_SHIFT", "MAX_DEGREES", "NOISE"])
def test_shifts_rotations_and_noise_each_change_the_images(digits, monkeypatch, kind):
    x, fill = digits.x_train[:16], digits.background
    for other in {"MAX_SHIFT", "MAX_DEGREES", "NOISE"} - {kind}:
        monkeypatch.setattr(vision, other, 0.0)
    change = (augment(x, torch.Generator().manual_seed(0), fill=fill) - x).abs()
    changed = change.amax(dim=(1, 2, 3)) > 0.05
    assert int(changed.sum()) >= 12  # of 16: a few draws are near the identity


def test_augmented_dataset_is_fresh_on_every_read_and_seeded(digits):
    x, y = digits.x_train[:8], digits.y_train[:8]
    one, two = (Augmented(x, y, fill=digits.background, seed=3) for _ in range(2))
    first, label = one[5]
    assert label == y[5] and first.shape == (3, 32, 32)
    assert torch.equal(first, two[5][0])
    assert not torch.equal(first, one[5][0])


def test_baseline_trains_on_augmented_images_and_the_workload_serves_plain_ones(monkeypatch):
    seen = []

    def record(model, train, task, **_):
        seen.append(train)
        return model.eval()  # the loader is what matters here, not the training

    monkeypatch.setattr(builtin, "fit", record)
    workload = vision.build(
        "vision-test",
        vision,
        lambda: resnet18(width=4),
        epochs=1,
        lr=1e-3,
        batch_size=32,
        seed=0,
        description="a test",
    )
    (loader,) = seen
    assert isinstance(loader.dataset, Augmented) and loader.batch_size == 32
    assert next(iter(loader))[0].shape == (32, 3, 32, 32)
    assert isinstance(workload.train.dataset, TensorDataset)
    assert workload.example_inputs[0].shape == (1, 3, 32, 32) and len(workload.val.dataset) == 360


def test_narrow_resnet18_prunes_to_a_smaller_working_model(digits):
    x_train, y_train, x_val, y_val, _ = digits
    train, val, calib = loaders(x_train[:64], y_train[:64], x_val[:32], y_val[:32], calib_size=32)
    torch.manual_seed(0)
    model = resnet18(width=16).eval()
    workload = Workload(
        name="resnet18-narrow",
        task="multiclass",
        model=model,
        train=train,
        val=val,
        calib=calib,
        example_inputs=(x_val[:1],),
        num_classes=10,
    )
    candidate = compress(model, "prune:ratio=0.5", workload)
    assert parameter_counts(candidate.model)[0] < 0.35 * parameter_counts(model)[0]
    with torch.no_grad():
        assert candidate.model(x_val[:4]).shape == (4, 10)


def test_vision_builtins_are_listed_with_their_domain():
    lines = describe()
    assert lines["resnet18"].startswith("vision:") and "ResNet-18" in lines["resnet18"]
    assert lines["mobilenet"].startswith("vision:") and "MobileNetV2" in lines["mobilenet"]
