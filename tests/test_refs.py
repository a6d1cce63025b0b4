"""What users type to name data, parsed or refused."""

from __future__ import annotations

import pytest

from cowfs.errors import UsageError
from cowfs.names import ancestors, check_name, normalize_path
from cowfs.refs import Ref, parse_branch_ref, parse_ref


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("images", Ref("images", "main")),
        ("images@main", Ref("images", "main")),
        ("images@dev^", Ref("images", "dev", 1)),
        ("images@dev^^", Ref("images", "dev", 2)),
        ("images@dev~3", Ref("images", "dev", 3)),
        ("images@main:/a/b.jpg", Ref("images", "main", 0, "a/b.jpg", True)),
        ("images@main:/", Ref("images", "main", 0, "", True)),
        ("images:/x", Ref("images", "main", 0, "x", True)),
        ("r_1.x@0123abcd", Ref("r_1.x", "0123abcd")),
        ("r@main:/naïve ☕//x/", Ref("r", "main", 0, "naïve ☕/x", True)),
    ],
)
def test_parse(text: str, want: Ref) -> None:
    assert parse_ref(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@main",
        ".repo@main",
        "re po@main",
        "r@",
        "r@.x",
        "r@a/b",
        "r@main:/../x",
        "r@main:/a/../b",
        "r@main:/a\x00b",
        "r@main:./x",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ref(text)


def test_paths_only_refs() -> None:
    with pytest.raises(UsageError, match="names a path"):
        parse_ref("r@main:/x", allow_path=False)


@pytest.mark.parametrize("text", ["r@dev^", "r@dev~2", "r@HEAD^^:/x"])
def test_branch_refs_refuse_ancestors(text: str) -> None:
    with pytest.raises(UsageError, match="ancestor"):
        parse_branch_ref(text, what="put into")
    with pytest.raises(UsageError, match="invalid branch"):
        parse_branch_ref("r@dev~")


def test_branch_refs_that_must_be_spelled_out() -> None:
    assert parse_branch_ref("r") == Ref("r", "main")
    assert parse_branch_ref("r@dev", allow_path=False, spelled=True) == Ref("r", "dev")
    for text in ("r", "r:/x"):
        with pytest.raises(UsageError, match=r"cannot delete tag .*spell out the name"):
            parse_branch_ref(text, what="delete tag", spelled=True)
    with pytest.raises(UsageError, match="names a path"):
        parse_branch_ref("r@dev:/x", allow_path=False, spelled=True)


def test_names_and_paths() -> None:
    assert check_name("a-b_c.d") == "a-b_c.d"
    for bad in [".x", "", "a" * 129, "a b", "ü"]:
        with pytest.raises(UsageError):
            check_name(bad)
    assert normalize_path("/a//b/") == "a/b"
    assert normalize_path("") == ""
    assert ancestors("a/b/c") == ["a", "a/b"]
