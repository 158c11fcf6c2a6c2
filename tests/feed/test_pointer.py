import pytest

from app.feed.pointer import MISSING, Pointer, deep_copy

DOC = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4, "i\\j": 5,
       'k"l': 6, " ": 7, "m~n": 8, "nil": None, "deep": {"list": [{"x": 1}]}}


@pytest.mark.parametrize(("text", "expected"), [
    # RFC 6901 section 5, every example
    ("", DOC), ("/foo", ["bar", "baz"]), ("/foo/0", "bar"), ("/", 0), ("/a~1b", 1), ("/c%d", 2),
    ("/e^f", 3), ("/g|h", 4), ("/i\\j", 5), ('/k"l', 6), ("/ ", 7), ("/m~0n", 8),
    ("/deep/list/0/x", 1),
])
def test_rfc_examples_resolve(text, expected):
    assert Pointer(text).get(DOC) == expected


def test_tilde_escapes_are_undone_in_the_right_order():
    assert Pointer("/~01").tokens == ("~1",)
    assert Pointer("/a~1b/~0").tokens == ("a/b", "~")


@pytest.mark.parametrize("text", [
    "/nope", "/foo/2", "/foo/-", "/foo/01", "/foo/x", "/foo/0/deeper", "/deep/list/1", "/nil/x",
])
def test_absent_places_are_missing_not_null(text):
    assert Pointer(text).get(DOC) is MISSING


def test_null_is_a_value():
    assert Pointer("/nil").get(DOC) is None
    assert not MISSING and repr(MISSING) == "MISSING"


@pytest.mark.parametrize(("text", "problem"), [
    ("foo", "must be empty or start with '/'"),
    ("/a~2", "'~' must be followed by 0 or 1"),
    ("/a~", "'~' must be followed by 0 or 1"),
    (5, "must be a string"),
])
def test_malformed_pointers_say_why(text, problem):
    with pytest.raises(ValueError, match=problem):
        Pointer(text)


def test_set_returns_a_deep_copy_and_leaves_the_original():
    doc = {"a": {"b": [1, 2]}, "keep": {"x": 1}}
    out = Pointer("/a/b/0").set(doc, {"new": True})
    assert out == {"a": {"b": [{"new": True}, 2]}, "keep": {"x": 1}}
    assert doc == {"a": {"b": [1, 2]}, "keep": {"x": 1}}
    assert out["keep"] is not doc["keep"]
    assert Pointer("/a/c").set(doc, 3)["a"] == {"b": [1, 2], "c": 3}
    assert Pointer("/a/b/-").set(doc, 3)["a"]["b"] == [1, 2, 3]
    assert Pointer("/a/b/2").set(doc, 3)["a"]["b"] == [1, 2, 3]
    assert Pointer("").set(doc, [1]) == [1]


@pytest.mark.parametrize(("text", "problem"), [
    ("/x/y", "parent does not exist"), ("/a/b/5", "past the end"), ("/a/b/x", "not an array index"),
    ("/keep/x/y", "not an object or array"),
])
def test_set_needs_an_existing_parent(text, problem):
    doc = {"a": {"b": [1, 2]}, "keep": {"x": 1}}
    with pytest.raises(LookupError, match=problem):
        Pointer(text).set(doc, 0)
    with pytest.raises(ValueError, match=problem):
        Pointer(text).check_settable(doc)


def test_put_changes_the_document_itself():
    doc = {"a": [0]}
    assert Pointer("/a/0").put(doc, 9) is doc and doc == {"a": [9]}


def test_pointers_compare_by_text_and_deep_copy_shares_nothing():
    assert Pointer("/a") == Pointer("/a") and len({Pointer("/a"), Pointer("/a")}) == 1
    assert Pointer("/a") != "/a"
    doc = {"a": [{"b": 1}]}
    copied = deep_copy(doc)
    assert copied == doc and copied["a"] is not doc["a"] and copied["a"][0] is not doc["a"][0]
