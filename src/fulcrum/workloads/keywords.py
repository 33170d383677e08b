"""``keywords``: spoken digits synthesised with espeak-ng, and a DS-CNN keyword spotter.

The "Hello Edge" case (Zhang et al. 2017) on speech made here: espeak-ng (a Debian package,
``apt-get install espeak-ng``) says "zero" ... "nine" in every voice — an English accent with a
voice variant — at three speeds, the pitch rotating so that each speed meets each pitch. Each
utterance is resampled to 16 kHz and its speech centred in one second. The split is by voice:
the voices whose accent and variant indices add up to a multiple of ``VAL_EVERY`` are heard only
in validation, so the model is judged on voices it never heard (every accent and every variant
is still heard in training).

Augmentation is the usual one for speech, drawn from seeded generators: a time shift of up to
±100 ms, background noise (white, pink or brown, generated here) at -5 to 20 dB SNR (Aurora-2's
range), and a gain of up to ±6 dB. The baseline trains on fresh draws every epoch; the
workload's splits hold one fixed draw each (validation from its own seed), so every split is
noisy speech, as deployed.

Features are log-mel energies: 40 ms Hann windows every 20 ms (Hello Edge's framing;
``torch.stft``), librosa's mel filter bank of 40 bands from 20 Hz to 7.6 kHz
(``pip install 'fulcrum[keywords]'``), normalised with the training split's mean and standard
deviation. The model's input is the feature map (n, 1, 49 frames, 40 bands): export and
quantization see the DS-CNN alone.
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import math
import shutil
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from fulcrum.errors import MissingDependencyError, require
from fulcrum.runtimes import default_threads
from fulcrum.workloads.base import Workload, cache_dir, definition_key
from fulcrum.workloads.builtin import loaders, trained

DESCRIPTION = (
    "speech: spoken digits synthesised with espeak-ng (64 voices; noise, shift, gain), 49x40 "
    "log-mel; DS-CNN-S keyword spotter (Hello Edge, 23k params, 10.6M MACs), 10 classes"
)
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's English accents and voice variants (``espeak-ng --voices=en``, ``--voices=variant``)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")  # fmt: skip
VARIANTS = ("m1", "m3", "m7", "f1", "f3", "f5", "klatt", "croak")
SPEEDS = (120, 150, 180)  # words per minute
PITCHES = (35, 50, 65)  # on espeak-ng's 0-99 scale
VAL_EVERY = 4  # accent i with variant j is a validation voice when (i + j) % VAL_EVERY == 0

RATE = 16_000  # samples per second; every clip is one second long
WINDOW, HOP, MELS, FMIN, FMAX = 640, 320, 40, 20.0, 7600.0  # 40 ms windows, every 20 ms
MAX_SHIFT, MAX_GAIN_DB, SNR_DB = 0.1, 6.0, (-5.0, 20.0)  # seconds, dB, dB (Aurora-2's SNR range)
EPOCHS, LR, BATCH_SIZE, SEED = 10, 3e-3, 64, 0
INSTALL = "apt-get install espeak-ng"

log = logging.getLogger(__name__)


class Speaker(NamedTuple):
    """One way of saying the words: an espeak-ng voice at a speed and a pitch."""

    accent: str
    variant: str
    speed: int
    pitch: int
    validation: bool  # a held-out voice

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


class Clips(NamedTuple):
    """Every word said by every speaker, in that order (speaker by speaker)."""

    audio: np.ndarray  # (n, RATE) float32 in [-1, 1]
    labels: np.ndarray  # (n,) int64, indices into WORDS
    validation: np.ndarray  # (n,) bool: spoken by a held-out voice
    key: str  # a hash of what made them (words, speakers, espeak-ng's version, this code)


def espeak() -> str:
    """The path of espeak-ng, or an error that says how to install it."""
    program = shutil.which("espeak-ng")
    if program is None:
        raise MissingDependencyError(
            "the keywords workload synthesises its speech with espeak-ng, which is not on PATH: "
            f"install it with `{INSTALL}` (Debian, Ubuntu)."
        )
    return program


def speakers() -> list[Speaker]:
    """Every voice (accent + variant) at every speed; the pitch rotates with voice and speed."""
    return [
        Speaker(
            accent, variant, speed, PITCHES[(i + j + k) % len(PITCHES)], (i + j) % VAL_EVERY == 0
        )
        for i, accent in enumerate(ACCENTS)
        for j, variant in enumerate(VARIANTS)
        for k, speed in enumerate(SPEEDS)
    ]


def one_second(audio: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """The speech in ``audio`` (from the first to the last sample above ``threshold`` x its peak),
    centred in one second of silence; speech longer than a second keeps its middle second."""
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    speech = audio[loud[0] : loud[-1] + 1] if len(loud) else audio[:0]
    if len(speech) > RATE:
        start = (len(speech) - RATE) // 2
        return speech[start : start + RATE]
    clip = np.zeros(RATE, dtype=np.float32)
    start = (RATE - len(speech)) // 2
    clip[start : start + len(speech)] = speech
    return clip


def synthesise(program: str, word: str, speaker: Speaker) -> np.ndarray:
    """``word`` said by ``speaker``: one second at 16 kHz, float32, the speech centred."""
    from scipy.signal import resample_poly

    command = [program, "-v", speaker.voice, "-s", str(speaker.speed), "-p", str(speaker.pitch)]
    wav = subprocess.run([*command, "--stdout", word], capture_output=True, check=True).stdout
    # espeak-ng's --stdout header leaves the length open: wave reads the frames that are there
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    common = math.gcd(RATE, rate)
    resampled = resample_poly(samples.astype(np.float32) / 32768, RATE // common, rate // common)
    return one_second(resampled.astype(np.float32))


def clips() -> Clips:
    """Every word said by every speaker: synthesised on first use, then read from the cache."""
    program = espeak()
    version = subprocess.run([program, "--version"], capture_output=True, text=True, check=True)
    everyone = speakers()
    key = definition_key(
        version.stdout.split("Data at")[0].strip(),
        repr((WORDS, everyone, RATE)),
        inspect.getsource(synthesise),
        inspect.getsource(one_second),
    )
    path = cache_dir() / f"keywords-audio-{key}.npz"
    if not path.is_file():
        jobs = [(word, speaker) for speaker in everyone for word in WORDS]
        log.info(
            "synthesising %d clips with espeak-ng (first use; cached in %s)", len(jobs), path.parent
        )
        with ThreadPoolExecutor(max_workers=default_threads()) as pool:
            audio = list(pool.map(lambda job: synthesise(program, *job), jobs))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as file:
            np.savez(
                file,
                audio=np.clip(np.round(np.stack(audio) * 32767), -32767, 32767).astype(np.int16),
                labels=np.array([WORDS.index(word) for word, _ in jobs], dtype=np.int64),
                validation=np.array([speaker.validation for _, speaker in jobs]),
            )
        tmp.replace(path)  # atomic: a killed run never leaves half a file
    with np.load(path) as stored:  # the first use reads back the int16 copy too, as later ones do
        return Clips(
            stored["audio"].astype(np.float32) / 32767, stored["labels"], stored["validation"], key
        )


def background_noise(n: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of white, pink or brown noise (power falling as 1, 1/f, 1/f²; a colour drawn
    per row) without a DC component, each of unit RMS."""
    white = torch.randn(n, samples, generator=generator)
    colour = torch.randint(0, 3, (n, 1), generator=generator)
    frequencies = torch.fft.rfftfreq(samples, 1 / RATE).clamp(min=1.0)
    amplitude = frequencies.pow(-colour / 2)
    amplitude[:, 0] = 0.0
    noise = torch.fft.irfft(torch.fft.rfft(white) * amplitude, n=samples)
    return noise / noise.pow(2).mean(1, keepdim=True).sqrt()


def augment(audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each clip of ``audio`` (n, samples) shifted, mixed with noise and scaled, at random.

    Shifts are up to ``MAX_SHIFT`` seconds either way (silence fills the gap), the noise's SNR
    is drawn from ``SNR_DB`` (against the clip's RMS), the gain from ±``MAX_GAIN_DB``. The draws
    come from ``generator`` only.
    """
    n, samples = audio.shape
    shift = ((torch.rand(n, generator=generator) * 2 - 1) * MAX_SHIFT * RATE).round().long()
    index = torch.arange(samples) - shift[:, None]
    inside = (index >= 0) & (index < samples)
    shifted = audio.gather(1, index.clamp(0, samples - 1)) * inside
    low, high = SNR_DB
    snr = low + (high - low) * torch.rand(n, 1, generator=generator)
    loudness = shifted.pow(2).mean(1, keepdim=True).sqrt()
    mixed = shifted + background_noise(n, samples, generator) * loudness * 10 ** (-snr / 20)
    gain_db = (torch.rand(n, 1, generator=generator) * 2 - 1) * MAX_GAIN_DB
    return mixed * 10 ** (gain_db / 20)


@functools.cache
def mel_filter_bank() -> torch.Tensor:
    """librosa's (Slaney) mel filter bank, (MELS, WINDOW // 2 + 1)."""
    librosa = require("librosa", "keywords")
    bank = librosa.filters.mel(sr=RATE, n_fft=WINDOW, n_mels=MELS, fmin=FMIN, fmax=FMAX)
    return torch.from_numpy(bank).float()


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """Waveforms (n, samples) as log-mel energies (n, 1, frames, MELS): time down, bands across,
    the layout of Hello Edge's 10x4 (time x frequency) first kernel."""
    spectrum = torch.stft(
        audio,
        n_fft=WINDOW,
        hop_length=HOP,
        window=torch.hann_window(WINDOW),
        center=False,
        return_complex=True,
    )
    mel = mel_filter_bank() @ spectrum.abs().pow(2)  # (n, MELS, frames)
    return torch.log(mel + 1e-6).transpose(1, 2).unsqueeze(1)  # the floor keeps silence finite


def ds_cnn(num_classes: int = 10, width: int = 64, blocks: int = 4) -> nn.Sequential:
    """Hello Edge's DS-CNN (DS-CNN-S at the defaults): a 10x4 convolution of stride 2, then
    ``blocks`` depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, each with batch norm
    and ReLU), global average pooling and a linear classifier.

    >>> sum(p.numel() for p in ds_cnn().parameters())
    23050
    """
    layers: list[nn.Module] = [
        nn.Conv2d(1, width, (10, 4), stride=2, padding=(5, 1), bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    for _ in range(blocks):
        layers += [
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


class Augmented:
    """A DataLoader's ``collate_fn`` that turns a batch of clips into freshly augmented features.

    Clip by clip, the same work took about 25x as long (on the two shared cores of the
    development machine). The draws come from one seeded generator, in the order the batches
    are read.
    """

    def __init__(self, *, mean: float, std: float, seed: int) -> None:
        self.mean, self.std = mean, std
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, batch: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        audio, labels = default_collate(batch)
        return (log_mel(augment(audio, self.generator)) - self.mean) / self.std, labels


class Speech(NamedTuple):
    """The workload's data, shared by its DS-CNN and the other Hello Edge families
    (``hello_edge``): fixed noisy splits, a training loader of fresh draws, and what made them."""

    train: DataLoader
    val: DataLoader
    calib: DataLoader
    augmented: DataLoader  # the training clips, augmented anew every epoch
    example: torch.Tensor  # one validation input, (1, 1, 49, 40)
    info: dict[str, Any]
    key: str  # a hash of what made the clips


def speech() -> Speech:
    """The speech features of every split (the clips synthesised on first use)."""
    mel_filter_bank()  # an absent librosa is reported before any synthesis
    data = clips()
    audio, labels = torch.from_numpy(data.audio), torch.from_numpy(data.labels)
    held_out = torch.from_numpy(data.validation)
    # calibration takes the first training clips: mix the words and voices first
    order = torch.randperm(int((~held_out).sum()), generator=torch.Generator().manual_seed(SEED))
    train_audio, y_train = audio[~held_out][order], labels[~held_out][order]
    val_audio, y_val = audio[held_out], labels[held_out]
    noisy_train = log_mel(augment(train_audio, torch.Generator().manual_seed(SEED + 1)))
    noisy_val = log_mel(augment(val_audio, torch.Generator().manual_seed(SEED + 2)))
    mean, std = float(noisy_train.mean()), float(noisy_train.std())
    x_train, x_val = (noisy_train - mean) / std, (noisy_val - mean) / std
    train, val, calib = loaders(x_train, y_train, x_val, y_val, batch_size=BATCH_SIZE, seed=SEED)
    augmented = DataLoader(
        TensorDataset(train_audio, y_train),
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
        collate_fn=Augmented(mean=mean, std=std, seed=SEED),
    )
    voices = {s.voice: s.validation for s in speakers()}
    info = {
        "words": list(WORDS),
        "voices": {
            "train": [v for v, held in voices.items() if not held],
            "val": [v for v, held in voices.items() if held],
        },
        "clips": {"train": len(y_train), "val": len(y_val)},
        "features": f"log-mel, {MELS} bands, {WINDOW / RATE * 1e3:.0f} ms windows every "
        f"{HOP / RATE * 1e3:.0f} ms",
        "normalisation": {"mean": mean, "std": std},
    }
    return Speech(train, val, calib, augmented, x_val[:1], info, data.key)


def build() -> Workload:
    data = speech()
    model, path = trained(
        "keywords",
        sys.modules[__name__],
        lambda: ds_cnn(num_classes=len(WORDS)),
        data.augmented,
        "multiclass",
        epochs=EPOCHS,
        lr=LR,
        seed=SEED,
        key=(data.key,),
    )
    return Workload(
        name="keywords",
        task="multiclass",
        model=model,
        train=data.train,
        val=data.val,
        calib=data.calib,
        example_inputs=(data.example,),
        num_classes=len(WORDS),
        source=str(path),
        description=DESCRIPTION,
        info=data.info,
    )
