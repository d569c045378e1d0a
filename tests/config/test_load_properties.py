"""Whatever a config file holds, loading it ends in a Config or a ConfigError naming the
file: never a traceback. Hypothesis writes the files, from the config's own vocabulary (so
it reaches deep into the sections) and from raw bytes; bounded to run in seconds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from reliability.cli_support import load_config
from reliability.config import Config, ConfigError


def _vocabulary(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every field name (and alias) of the config's models, nested ones included."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names |= {name, info.alias or name}
        for arg in _types(info.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                names |= _vocabulary(arg, seen)
    return names


def _types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types(a)]


KEYS = [*sorted(_vocabulary(Config) - {"source"}), "nope", "<<", ""]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["15s", "0", "-1m", "1h30m", "blue", "127.0.0.1", "http://a:b@c/", "/"]),
    st.text(max_size=20),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _loads_or_says_why(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert exc.lines, "a ConfigError says what is wrong"
        assert all(line.startswith(str(path)) for line in exc.lines), exc.lines
    else:
        assert isinstance(config, Config)
        for endpoint in config.endpoints:
            assert math.isfinite(endpoint.interval) and endpoint.interval > 0


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(KEYS), DOCUMENTS, max_size=6))
def test_any_document_of_config_words_loads_or_is_refused_by_line(tmp_path, document):
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    _loads_or_says_why(path)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_any_bytes_load_or_are_refused_by_line(tmp_path, raw):
    path = tmp_path / "reliability.yaml"
    path.write_bytes(raw)
    _loads_or_says_why(path)
