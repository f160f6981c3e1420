import pytest

from dsfs.errors import InvalidInput
from dsfs.paths import ancestors, check_path, normalize_dest, parent_of

GOOD = ["a", "a/b", "a b/c.txt", "x" * 255, "é/ü", ".hidden", "a..b", "..a"]
BAD = [
    ("", "must not be empty"),
    ("/abs", "must be relative"),
    ("a/../b", "'..' components"),
    ("..", "'..' components"),
    ("./a", "'.' components"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("a\x00b", "nul byte"),
    ("y" * 256, "longer than 255"),
]


@pytest.mark.parametrize("path", GOOD)
def test_good_paths(path):
    assert check_path(path) == path


@pytest.mark.parametrize("path,message", BAD)
def test_bad_paths_name_the_problem(path, message):
    with pytest.raises(InvalidInput, match=message):
        check_path(path)


@pytest.mark.parametrize("dest,expected", [(None, ""), ("", ""), (".", ""), ("/a/b/", "a/b"), ("a/./b", "a/b")])
def test_normalize_dest(dest, expected):
    assert normalize_dest(dest) == expected


def test_normalize_dest_rejects_escape():
    with pytest.raises(InvalidInput, match=r"'\.\.' components"):
        normalize_dest("../x")


def test_ancestors_and_parent():
    assert list(ancestors("a/b/c")) == ["a", "a/b"]
    assert list(ancestors("a")) == []
    assert parent_of("a/b/c") == "a/b" and parent_of("a") == ""
