"""Library calls leave the caller's state as they found it."""

import logging
import warnings

import torch

from fulcrum.compression import compress
from fulcrum.evaluation import evaluate
from fulcrum.measure import profile
from fulcrum.testing import tiny_context, tiny_mlp
from fulcrum.workloads.base import Workload


def snapshot(model: torch.nn.Module) -> tuple:
    return (
        torch.get_num_threads(),
        torch.random.get_rng_state().clone(),
        logging.root.manager.disable,
        list(warnings.filters),
        model.training,
    )


def same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and torch.equal(a[1], b[1]) and a[2:] == b[2:]


def test_profile_evaluate_and_compress_leave_global_state_and_the_models_mode_alone():
    model = tiny_mlp().train()  # the caller's model is in training mode
    ctx = tiny_context("mlp", model)
    workload = Workload(
        name="tiny",
        task="multiclass",
        model=model,
        val=ctx.val,
        train=ctx.train,
        calib=ctx.calib,
        example_inputs=ctx.example_inputs,
        num_classes=4,
    )
    recipe = "prune:0.5 > finetune:epochs=1 > quantize:int8-static"

    def calls() -> None:
        profile(model, ctx.example_inputs, latency=False)
        evaluate(model, ctx.val, "multiclass")
        compress(model, recipe, workload, threads=2)

    calls()  # first, so that the libraries' own imports (which add warning filters) are done
    torch.set_num_threads(1)
    torch.manual_seed(123)
    model.train()
    before = snapshot(model)
    calls()
    assert same(snapshot(model), before)
