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


def test_a_search_leaves_optuna_verbosity_warnings_and_threads_as_they_were(search_dir, tmp_path):
    """A search quiets Optuna's own log lines and its experimental warnings while it runs, and
    sets torch's threads: all of it is as it was after (the caller's choices stand)."""
    import optuna

    from fulcrum import search, workloads
    from fulcrum.search.settings import SearchSettings

    workload = workloads.load(str(search_dir / "fast.toml"))
    settings = SearchSettings(trials=1, max_drop=100.0, trial_seconds=0.02, sampler="random")
    search(workload, settings, tmp_path / "run", threads=1)  # imports done, filters added
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    torch.set_num_threads(2)
    before = (optuna.logging.get_verbosity(), list(warnings.filters), torch.get_num_threads())
    search(
        workload, SearchSettings(**{**settings.__dict__, "trials": 2}), tmp_path / "run", threads=1
    )
    after = (optuna.logging.get_verbosity(), list(warnings.filters), torch.get_num_threads())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert after == before


def test_loading_a_transformers_model_leaves_its_verbosity_and_progress_bars_alone():
    import transformers  # a test dependency (the text extra): never skipped

    from fulcrum.testing import tiny_bert

    tiny_bert()  # the import's own filters and handlers, first
    transformers.logging.set_verbosity_info()
    transformers.logging.enable_progress_bar()
    before = (transformers.logging.get_verbosity(), logging.root.manager.disable)
    tiny_bert()
    after = (transformers.logging.get_verbosity(), logging.root.manager.disable)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_warning()
    assert after == before and bars
