"""Recovery training on two processes (DDP, gloo) matches one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from fulcrum.testing import tiny_data, tiny_mlp
from fulcrum.train import fit


def problem() -> tuple[torch.nn.Module, DataLoader]:
    data = tiny_data((16,), n=96)
    loader = DataLoader(
        data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    return tiny_mlp(), loader


def train_as(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, loader = problem()
        sizes: list[int] = []
        model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
        trained = fit(model, loader, "multiclass", epochs=3, lr=1e-2, seed=0)
        if rank == 0:
            torch.save({"state": trained.state_dict(), "sizes": sizes}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_train_what_one_process_trains(tmp_path):
    torch.set_num_threads(1)
    model, loader = problem()
    alone = fit(model, loader, "multiclass", epochs=3, lr=1e-2, seed=0).state_dict()
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(
        train_as, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True
    )
    saved = torch.load(out)
    together = saved["state"]
    assert set(saved["sizes"]) == {16}  # each process computed half of every 32-sample batch
    assert set(together) == set(alone)
    moved = max(float((alone[k] - model.state_dict()[k]).abs().max()) for k in alone)
    assert moved > 1e-2  # training did change the weights ...
    for key in alone:  # ... and both runs changed them alike
        torch.testing.assert_close(together[key], alone[key], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
    reason="torchrun not installed",
)
def test_compress_runs_under_torchrun_and_rank_0_writes_the_run(tmp_path):
    from tests_support import fulcrum_env, write_user_workload

    toml = write_user_workload(tmp_path)
    out = tmp_path / "run"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = fulcrum_env(OMP_NUM_THREADS="1")
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "fulcrum"]
    done = subprocess.run(
        [
            *command,
            "compress",
            str(toml),
            "--recipe",
            "finetune:epochs=1",
            "--out",
            str(out),
            "--seconds",
            "0.1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["comparison"]["recipe"].startswith("finetune")
    assert done.stdout.count("report:") == 1  # rank 0 alone reports
    refused = subprocess.run(
        [*command, "profile", str(toml)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "only fulcrum compress trains under torchrun" in refused.stderr
