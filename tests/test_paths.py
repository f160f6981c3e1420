import errno

import pytest

from dsfs.errors import InvalidInput
from dsfs.paths import (NameTooLong, ancestors, check_name_length, check_path, name_bytes, name_str,
                        normalize_dest, parent_of)

GOOD = ["a", "a/b", "a b/c.txt", "x" * 255, "é/ü", ".hidden", "a..b", "..a",
        "caf\udce9.jpg", "\udcff/\udc80" * 3, "\udce9" * 255, "a\nb", "back\\slash",
        "a/.b", "d/" * 100 + "f", "a/" + "x" * 255, "x" * 200 + "/" + "é" * 60]
BAD = [
    ("", "must not be empty"),
    ("/abs", "must be relative"),
    ("a/../b", "'..' components"),
    ("..", "'..' components"),
    ("./a", "'.' components"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("a/.", "'.' components"),
    ("a/" + "y" * 256, "longer than 255"),
    ("d/" * 100 + "\x00", "nul byte"),
    ("a\x00b", "nul byte"),
    ("y" * 256, "longer than 255"),
    ("é" * 128, "longer than 255"),
    ("a/\ud800", "stands for no bytes"),         # a surrogate no byte decodes to
    ("\udcc3\udca9", "stands for no bytes"),      # escapes spelling valid UTF-8 ('é')
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


def test_names_are_bytes_one_to_one():
    for raw in [b"caf\xe9.jpg", b"\x83e\x83X\x83g.txt", "ünï".encode(), b"\xed\xb3\xa9", b"\xff" * 255]:
        name = name_str(raw)
        assert check_path(name) == name and name_bytes(name) == raw


def test_name_length_is_counted_in_bytes():
    assert check_name_length("é" * 127) == "é" * 127
    with pytest.raises(NameTooLong, match="longer than 255 bytes") as exc:
        check_name_length("é" * 128)
    assert exc.value.errno == errno.ENAMETOOLONG
