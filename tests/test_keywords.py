"""The keywords workload at a reduced size: a few words and voices, a narrow DS-CNN."""

from __future__ import annotations

import functools
import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fulcrum.cli import main
from fulcrum.errors import MissingDependencyError
from fulcrum.evaluation import evaluate_workload
from fulcrum.measure import count_compute, parameter_counts
from fulcrum.workloads import builtin, cache_dir, describe, keywords, load
from fulcrum.workloads.keywords import (
    RATE,
    Augmented,
    augment,
    background_noise,
    ds_cnn,
    log_mel,
    one_second,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)"
)
SMALL = {
    "WORDS": ("zero", "one", "two"),
    "ACCENTS": ("en-us", "en-gb"),
    "VARIANTS": ("m1", "f3"),
    "SPEEDS": (130, 170),
}  # 4 voices, en-us+m1 held out: 3 words x 2 speeds = 6 validation clips, 18 training clips


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SMALL.items():
        monkeypatch.setattr(keywords, name, value)


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No shift, no gain, no noise to speak of: each test turns on the part it checks."""
    monkeypatch.setattr(keywords, "MAX_SHIFT", 0.0)
    monkeypatch.setattr(keywords, "MAX_GAIN_DB", 0.0)
    monkeypatch.setattr(keywords, "SNR_DB", (300.0, 300.0))


def test_speech_is_centred_in_one_second_and_long_speech_keeps_its_middle():
    audio = np.zeros(2 * RATE, dtype=np.float32)
    audio[100:4100] = 0.5  # 0.25 s of "speech" near the start
    clip = one_second(audio)
    assert clip.shape == (RATE,)
    assert np.flatnonzero(clip).tolist() == list(range(6000, 10000))
    long = np.linspace(0.5, 1.0, 3 * RATE, dtype=np.float32)  # loud throughout
    assert np.array_equal(one_second(long), long[RATE : 2 * RATE])  # the middle second of three


@needs_espeak
def test_synthesis_is_one_second_at_16khz_deterministic_and_cached(small, monkeypatch):
    first = keywords.clips()
    assert first.audio.shape == (12 * 2, RATE) and first.audio.dtype == np.float32
    peaks = np.abs(first.audio).max(axis=1)
    assert np.all(peaks > 0.1) and np.all(peaks <= 1.0)
    assert np.all(first.audio[:, :400] == 0) and np.all(first.audio[:, -400:] == 0)  # centred
    assert first.labels.tolist() == [0, 1, 2] * 8  # every speaker says every word in order
    held_out = [s.voice for s in keywords.speakers() for _ in SMALL["WORDS"] if s.validation]
    assert set(held_out) == {"en-us+m1"} and first.validation.sum() == len(held_out) == 6
    assert not np.allclose(first.audio[0], first.audio[3])  # another speed, another clip
    cached = cache_dir() / f"keywords-audio-{first.key}.npz"
    written = cached.stat().st_mtime_ns
    again = keywords.clips()
    assert again.key == first.key and np.array_equal(again.audio, first.audio)
    assert cached.stat().st_mtime_ns == written  # read back, not synthesised again


def test_log_mel_has_49_frames_of_40_bands_and_finds_a_tone():
    t = torch.arange(RATE) / RATE
    tones = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (300.0, 3000.0)])
    features = log_mel(tones)
    assert features.shape == (2, 1, 49, 40)
    assert torch.equal(features, log_mel(tones))
    loudest = features[:, 0].mean(dim=1).argmax(dim=1)  # the band holding each tone
    peaks = keywords.mel_filter_bank().argmax(dim=1) * RATE / keywords.WINDOW  # each band's Hz
    assert peaks[loudest[0]] == pytest.approx(300, rel=0.15)
    assert peaks[loudest[1]] == pytest.approx(3000, rel=0.15)
    doubled = log_mel(2 * tones)[0, 0, :, loudest[0]] - features[0, 0, :, loudest[0]]
    assert torch.allclose(doubled, torch.full_like(doubled, float(np.log(4.0))), atol=1e-3)


def test_augmentation_keeps_the_shape_and_repeats_for_a_seed():
    clips = torch.randn(8, RATE, generator=torch.Generator().manual_seed(0)) * 0.1

    def draw(seed: int) -> torch.Tensor:
        return augment(clips, torch.Generator().manual_seed(seed))

    first = draw(0)
    assert first.shape == clips.shape
    assert torch.equal(first, draw(0))
    assert not torch.allclose(first, draw(1))
    assert not torch.allclose(first, clips)


def test_noise_is_mixed_at_the_drawn_snr(quiet, monkeypatch):
    monkeypatch.setattr(keywords, "SNR_DB", (10.0, 10.0))
    clips = torch.randn(6, RATE, generator=torch.Generator().manual_seed(0)) * 0.2
    noise = augment(clips, torch.Generator().manual_seed(1)) - clips
    ratio = noise.pow(2).mean(1).sqrt() / clips.pow(2).mean(1).sqrt()
    assert torch.allclose(ratio, torch.full((6,), 10 ** (-10 / 20)), rtol=1e-3)


def test_gain_scales_each_clip_by_at_most_6_db(quiet, monkeypatch):
    monkeypatch.setattr(keywords, "MAX_GAIN_DB", 6.0)
    clips = torch.rand(32, RATE, generator=torch.Generator().manual_seed(0)) + 0.5
    scale = augment(clips, torch.Generator().manual_seed(1)) / clips
    per_clip = scale[:, 0]
    assert torch.allclose(scale, per_clip[:, None].expand_as(scale), rtol=1e-5)
    decibels = 20 * torch.log10(per_clip)
    assert decibels.abs().max() <= 6.0 and decibels.abs().max() > 3.0


def test_shifts_move_each_clip_by_up_to_100_ms_and_fill_with_silence(quiet, monkeypatch):
    monkeypatch.setattr(keywords, "MAX_SHIFT", 0.1)
    clips = torch.zeros(32, RATE)
    clips[:, 8000] = 1.0
    moved = augment(clips, torch.Generator().manual_seed(1))
    assert torch.allclose(moved.sum(dim=1), torch.ones(32))  # one impulse each, nothing else
    shifts = moved.argmax(dim=1) - 8000
    assert shifts.abs().max() <= 1600 and len(set(shifts.tolist())) > 20
    edge = torch.zeros(1, RATE)
    edge[0, -1] = 1.0  # what leaves the clip is gone, what enters it is silence
    kept = augment(edge.expand(32, -1), torch.Generator().manual_seed(1)).sum(dim=1)
    assert set(kept.tolist()) == {0.0, 1.0}


def test_background_noise_has_unit_rms_no_dc_and_three_colours():
    noise = background_noise(60, RATE, torch.Generator().manual_seed(0))
    assert torch.allclose(noise.pow(2).mean(1), torch.ones(60), rtol=1e-4)
    assert noise.mean(1).abs().max() < 1e-4
    power = torch.fft.rfft(noise).abs().pow(2)
    tilt = power[:, 100:200].mean(1) / power[:, 4000:8000].mean(1)  # per Hz, low over high
    colours = torch.bucketize(torch.log10(tilt), torch.tensor([0.5, 2.5]))
    assert sorted(set(colours.tolist())) == [0, 1, 2]  # white ~1, pink ~30, brown ~1000


def test_full_ds_cnn_is_hello_edges_small_model():
    model = ds_cnn()
    macs, _, _, counted_on = count_compute(model, (torch.zeros(1, 1, 49, 40),))
    assert counted_on == "meta"
    assert parameter_counts(model)[0] == 23050 and macs == pytest.approx(10.62e6, rel=0.01)
    stem = model[0]
    assert stem.kernel_size == (10, 4) and stem.stride == (2, 2)


def test_narrow_ds_cnn_is_depthwise_separable_and_gives_ten_scores():
    model = ds_cnn(width=8, blocks=2).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    pointwise = [m for m in convs if m.kernel_size == (1, 1)]
    assert len(depthwise) == len(pointwise) == 2
    assert all(m.groups == m.in_channels == m.out_channels == 8 for m in depthwise)
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 49, 40)).shape == (3, 10)


@needs_espeak
def test_baseline_trains_on_fresh_noisy_features_and_the_splits_are_fixed(small, monkeypatch):
    seen = []

    def record(model, train, task, **_):
        seen.append(train)
        return model.eval()  # the loader is what matters here, not the training

    monkeypatch.setattr(builtin, "fit", record)
    monkeypatch.setattr(keywords, "ds_cnn", functools.partial(ds_cnn, width=4, blocks=1))
    monkeypatch.setattr(keywords, "EPOCHS", 99)  # a cache key of its own for this untrained model
    workload = keywords.build()
    (loader,) = seen
    assert isinstance(loader.collate_fn, Augmented)
    first, second = (torch.cat([x for x, _ in loader]) for _ in range(2))
    assert first.shape == (18, 1, 49, 40) and not torch.allclose(first, second)
    plain = workload.train.dataset.tensors[0]  # one fixed draw, normalised by its statistics
    assert isinstance(workload.train.dataset, TensorDataset) and plain.shape == first.shape
    assert float(plain.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(plain.std()) == pytest.approx(1.0, abs=1e-4)


@needs_espeak
def test_reduced_workload_loads_trains_and_evaluates_on_unheard_voices(small, monkeypatch):
    monkeypatch.setattr(keywords, "ds_cnn", functools.partial(ds_cnn, width=8, blocks=1))
    monkeypatch.setattr(keywords, "EPOCHS", 1)
    workload = load("keywords")
    assert workload.task == "multiclass" and workload.num_classes == 3
    assert workload.example_inputs[0].shape == (1, 1, 49, 40)
    assert workload.info["clips"] == {"train": 18, "val": 6}
    voices = workload.info["voices"]
    assert voices["val"] == ["en-us+m1"] and "en-us+m1" not in voices["train"]
    accuracy = evaluate_workload(workload).metrics["accuracy"]
    with torch.no_grad():
        hits = sum(int((workload.model(x).argmax(1) == y).sum()) for x, y in workload.val)
    assert accuracy == pytest.approx(hits / 6)
    assert len(workload.calib.dataset) == 18


def test_without_espeak_ng_the_command_exits_2_naming_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    monkeypatch.setenv("FULCRUM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["evaluate", "keywords"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`apt-get install espeak-ng`" in err
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_without_librosa_the_workload_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "librosa", None)  # import fails
    keywords.mel_filter_bank.cache_clear()
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'fulcrum\[keywords\]'"):
            load("keywords")
    finally:
        keywords.mel_filter_bank.cache_clear()


def test_keywords_is_listed_with_its_domain():
    line = describe()["keywords"]
    assert line.startswith("speech:") and "espeak-ng" in line and "DS-CNN" in line
