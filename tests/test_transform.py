import pytest

from app.errors import ConfigError, TransformError
from app.transform import apply_transform, load_transform


def test_loads_a_function_by_path():
    assert load_transform("json:dumps").__name__ == "dumps"
    assert load_transform(None) is None


@pytest.mark.parametrize("path", ["no_such_module_xyz:f", "json:no_such_function", "json:__doc__"])
def test_load_failures_name_the_variable(path):
    with pytest.raises(ConfigError) as caught:
        load_transform(path)
    (line,) = caught.value.problems
    assert line.startswith("INGEST_TRANSFORM: ") and path in line


def test_results_normalise_to_a_list():
    assert apply_transform(lambda e: e, {"a": 1}) == [{"a": 1}]
    assert apply_transform(lambda e: None, {"a": 1}) == []
    assert apply_transform(lambda e: [e, e], {"a": 1}) == [{"a": 1}, {"a": 1}]
    with pytest.raises(TransformError, match="expected dict"):
        apply_transform(lambda e: [1], {"a": 1})
