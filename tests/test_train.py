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


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_teachers_outputs_for_an_example_seen_before_come_from_memory(tmp_path):
    """In another batch, padded to another length, an example gets from the memo what the
    teacher computes for it (output and layer outputs at its real tokens), without a forward
    pass; a batch with a new example runs the teacher, and with no room nothing is kept."""
    from fulcrum.teacher import TeacherMemo, layer_outputs
    from fulcrum.workloads import load
    from test_text import make_text_workload

    workload = load(str(make_text_workload(tmp_path)))
    teacher = workload.model.eval()
    (ids, mask), _ = next(iter(workload.val))
    ids, mask = ids[:6], mask[:6]
    assert int(mask.sum(1).min()) < ids.shape[1]  # some are padded
    memo = TeacherMemo(teacher, [0, 1], limit=1 << 30)
    calls = count_forwards(teacher)
    memo((ids, mask))
    assert len(calls) == 1
    # the same examples, in reverse order, padded with three more positions
    again = (
        torch.cat([ids.flip(0), torch.zeros(6, 3, dtype=ids.dtype)], 1),
        torch.cat([mask.flip(0), torch.zeros(6, 3, dtype=mask.dtype)], 1),
    )
    output, layers = memo(again)
    assert len(calls) == 1
    with torch.no_grad(), layer_outputs(teacher, [0, 1]) as live:
        expected = teacher(*again)
    assert len(calls) == 2
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-4)
    real = again[1].bool()
    for layer in (0, 1):
        torch.testing.assert_close(layers[layer][real], live[layer][real], atol=1e-5, rtol=1e-4)
    memo((ids[:3], mask[:3]))
    assert len(calls) == 2  # all seen
    new = ids.clone()
    new[0, 1] = (new[0, 1] + 1) % 20 + 5  # another sentence
    memo((new, mask))
    assert len(calls) == 3
    nothing_kept = TeacherMemo(teacher, [0, 1], limit=0)
    nothing_kept((ids, mask))
    nothing_kept((ids, mask))
    assert len(calls) == 5


def test_distillation_runs_the_teacher_once_per_example_and_again_on_augmented_inputs():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    teacher = copy.deepcopy(student)
    data = DataLoader(
        TensorDataset(torch.randn(64, 4), torch.zeros(64, 2)), batch_size=16, shuffle=True
    )
    calls = count_forwards(teacher)
    kwargs = {"epochs": 3, "teacher": teacher, "alpha": 1.0}
    fit(student, data, "regression", **kwargs)
    assert len(calls) == 4  # the first epoch's four batches; then from memory
    calls.clear()
    fit(student, data, "regression", augment="noise", **kwargs)  # new inputs every epoch
    assert len(calls) == 12
