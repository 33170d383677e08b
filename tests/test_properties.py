"""Property-based tests: whatever text a user writes, the parsers answer with a valid result or
a one-line error of the expected kind — never another exception; and an input with one bad part
is refused by a message naming that part."""

import re
import string
import types
import typing
from dataclasses import fields
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import module_of
from fulcrum.compression import parse_recipe
from fulcrum.errors import ConfigError, FulcrumError
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
def test_recipe_text_parses_or_raises_a_one_line_config_error(text):
    try:
        parsed = parse_recipe(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert parsed and parse_recipe(" > ".join(str(c) for c in parsed)) == parsed


def _typed_fields(name: str, kinds: set[type]) -> list[str]:
    """The parameters of technique ``name`` that take only values of ``kinds`` (or None)."""
    hints = typing.get_type_hints(TECHNIQUES[name].config)
    out = []
    for f in fields(TECHNIQUES[name].config):
        hint = hints[f.name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if set(options) - {type(None)} <= kinds:
            out.append(f.name)
    return out


# every technique's number and true/false parameters: none of them takes these
NUMERIC = {name: _typed_fields(name, {int, float, bool}) for name in NAMES}
NOT_A_NUMBER = ["abc", "nan", "inf", "1e999", ""]


@st.composite
def recipes_with_one_bad_parameter(draw):
    """A recipe of default steps, one of them given a value its parameter cannot take, or a
    misspelled parameter; and the message that must refuse it."""
    name = draw(st.sampled_from([n for n in NAMES if NUMERIC[n]]))
    field = draw(st.sampled_from(NUMERIC[name]))
    if draw(st.booleans()):
        value = draw(st.sampled_from(NOT_A_NUMBER))
        bad, expected = f"{name}:{field}={value}", f"The '{field}' parameter of {name} cannot be"
    else:
        bad, expected = f"{name}:{field}s=1", f"{name} has no parameter '{field}s'"
    before = draw(st.lists(st.sampled_from(NAMES), max_size=2))
    after = draw(st.lists(st.sampled_from(NAMES), max_size=2))
    return " > ".join([*before, bad, *after]), expected


@given(recipes_with_one_bad_parameter())
@settings(max_examples=200, deadline=None)
def test_a_recipe_with_one_bad_parameter_is_refused_naming_it(case):
    text, expected = case
    try:
        parse_recipe(text)
    except ConfigError as exc:
        assert str(exc).startswith(expected) and "\n" not in str(exc)
    else:
        raise AssertionError(f"{text!r} was accepted")


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
def test_toml_workloads_load_or_raise_a_one_line_error_naming_the_file(tmp_path: Path, doc):
    from fulcrum.workloads import load

    path = tmp_path / "w.toml"
    path.write_text(doc)
    try:
        load(str(path))
    except FulcrumError as exc:
        assert "w.toml" in str(exc) and "\n" not in str(exc).strip()


# a valid workload's optional entries, and for each entry values it refuses (MOD: the user's code)
GOOD_ENTRIES = {
    "num_classes": "3",
    "metric": '"MOD:hits"',
    "name": '"w"',
    "description": '"a workload"',
    "input_shape": "[1, 4]",
}
BAD_ENTRIES = {
    "task": ['"classify"', '"multiclas"', "3"],
    "model": ['"nocolon"', '"no_such_module_xyz:f"', '"MOD:nope"', '"MOD:splits"', "3"],
    "data": ['"nocolon"', '"MOD:nope"', "3"],
    "metric": ['"nocolon"', '"MOD:nope"', "3"],
    "num_classes": ["0", "-1", "2.5", "true", '"3"'],
    "max_length": ["0"],
    "example_length": ["-1"],
    "input_shape": ['"1x4"', "3"],
    "model_args": ["3", "{hiden = 4}"],
    "name": ["3"],
    "description": ["3"],
    "checkpoint": ["3"],
    "allow_pickle": ['"yes"'],
    "inputs": ['"x"', '["x"]'],
    "output": ["3"],
    "reference": ['"nocolon"'],
    "modle": ['"MOD:make_model"'],  # an unknown entry
}


@st.composite
def workloads_with_one_bad_entry(draw):
    """A valid workload TOML, some optional entries set, one entry given a value it refuses."""
    doc = {"task": '"multiclass"', "model": '"MOD:make_model"', "data": '"MOD:splits"'}
    optional = draw(st.lists(st.sampled_from(sorted(GOOD_ENTRIES)), unique=True))
    doc |= {key: GOOD_ENTRIES[key] for key in optional}
    entry = draw(st.sampled_from(sorted(BAD_ENTRIES)))
    doc[entry] = draw(st.sampled_from(BAD_ENTRIES[entry]))
    return "\n".join(f"{k} = {v}" for k, v in doc.items()), entry


@given(workloads_with_one_bad_entry())
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_toml_workload_with_one_bad_entry_is_refused_naming_the_entry(user_dir: Path, case):
    from fulcrum.workloads import load

    doc, entry = case
    path = user_dir / "w.toml"
    path.write_text(doc.replace("MOD", module_of(user_dir)))
    try:
        load(str(path))
    except ConfigError as exc:
        message = str(exc)
        assert re.search(rf"\b{entry}\b", message), (doc, message)
        assert "w.toml" in message and "\n" not in message
    else:
        raise AssertionError(f"accepted:\n{doc}")
