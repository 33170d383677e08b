"""Property-based tests: whatever text a user writes, the parsers answer with a valid result or
a FulcrumError — never another exception."""

import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fulcrum.compression import parse_recipe
from fulcrum.errors import FulcrumError
from fulcrum.techniques import TECHNIQUES

NAMES = sorted(TECHNIQUES)
KEYS = ["ratio", "epochs", "mode", "lr", "skip", "level", "embeddings", "rank_ratio", "x"]
VALUES = ["0.5", "2", "-1", "nan", "inf", "int8-dynamic", "int4", "true", "a+b", "", "1e9"]

# near-valid recipes: real technique names, keys and values, joined in random ways
step = st.builds(
    lambda name, args: name + (":" + ",".join(args) if args else ""),
    st.sampled_from([*NAMES, "prun", ""]),
    st.lists(
        st.one_of(
            st.sampled_from(VALUES),
            st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(VALUES)),
        ),
        max_size=3,
    ),
)
recipes = st.one_of(
    st.lists(step, min_size=0, max_size=4).map(" > ".join),
    st.text(alphabet=string.printable, max_size=60),
)


@given(recipes)
@settings(max_examples=300, deadline=None)
def test_recipe_text_parses_or_raises_a_fulcrum_error(text):
    try:
        parsed = parse_recipe(text)
    except FulcrumError as exc:
        assert "\n" not in str(exc)
        return
    assert parsed and parse_recipe(" > ".join(str(c) for c in parsed)) == parsed


toml_values = st.one_of(
    st.sampled_from(['"multiclass"', '"embedding"', '"mod:fn"', '"x.npz"', "3", "[1, 2]", "true"]),
    st.sampled_from(["{a = 1}", '"abc"', "-1", "0", '["input_ids"]', "1.5"]),
    st.text(alphabet=string.ascii_letters + ":._", max_size=12).map(lambda t: f'"{t}"'),
)
TOML_KEYS = ["task", "model", "data", "onnx", "text", "transformers", "num_classes", "metric"]
TOML_KEYS += ["modle", "checkpoint", "input_shape", "inputs", "model_args", "max_length", "output"]
toml_keys = st.sampled_from(TOML_KEYS)
toml_docs = st.one_of(
    st.lists(st.tuples(toml_keys, toml_values), max_size=5).map(
        lambda kv: "\n".join(f"{k} = {v}" for k, v in dict(kv).items())
    ),
    st.text(alphabet=string.printable, max_size=80),
)


@given(toml_docs)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_toml_workloads_load_or_raise_a_fulcrum_error(tmp_path: Path, doc):
    from fulcrum.workloads import load

    path = tmp_path / "w.toml"
    path.write_text(doc)
    try:
        load(str(path))
    except FulcrumError as exc:
        assert "\n" not in str(exc).strip()
