"""The training loop (fulcrum.train) on tiny models built in code."""

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulcrum.train import fit


def test_a_student_trained_without_dropout_learns_nothing_from_itself_and_keeps_its_rate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.zeros(64, 2)), batch_size=16)
    kwargs = {"epochs": 2, "teacher": copy.deepcopy(model), "alpha": 1.0, "weight_decay": 0.0}
    still = fit(model, data, "regression", dropout=False, **kwargs)
    moved = fit(model, data, "regression", dropout=True, **kwargs)
    weights = [p.detach() for p in model.parameters()]
    # the student is its own teacher: without dropout there is nothing to learn
    assert all(torch.equal(a, b) for a, b in zip(weights, still.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights, moved.parameters(), strict=True))
    assert still[1].p == 0.5  # the rate is back for whatever trains it next


def test_a_holdout_score_that_ties_keeps_the_later_epoch(monkeypatch):
    """Early stopping returns the best holdout epoch's weights; among equal scores the last,
    which trained longest. Each run is compared with the same training whose holdout score
    rises every epoch (so its last epoch is kept for certain)."""
    from fulcrum import train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    data = DataLoader(
        TensorDataset(torch.randn(160, 4), torch.randint(0, 2, (160,))), batch_size=16
    )

    def trained(scores):
        values = iter(scores)
        monkeypatch.setattr(train, "score", lambda *a, **k: next(values))
        return fit(model, data, "multiclass", epochs=3, patience=5)

    last = trained([0.1, 0.2, 0.3])
    tied = trained([0.9, 0.9, 0.9])
    first = trained([0.9, 0.5, 0.5])
    same = [torch.equal(a, b) for a, b in zip(last.parameters(), tied.parameters(), strict=True)]
    assert all(same)
    # and a score that falls keeps the earlier, better epoch
    assert not all(
        torch.equal(a, b) for a, b in zip(last.parameters(), first.parameters(), strict=True)
    )
