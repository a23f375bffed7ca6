"""docs/model-tools.md: the result header, token estimates, middle truncation and ``ToolResult.text``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codemode.model import Completed, ImageDetail, ImageItem, Terminated, TextItem, Yielded
from codemode.tools.render import (
    estimate_tokens,
    format_result,
    header_text,
    middle_truncate,
    truncate_items,
)
from codemode.tools.result import ToolResult

IMAGE = ImageItem("data:image/png;base64,AAAA", ImageDetail.HIGH)


# --- estimates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é", 1), ("€€", 2), ("😀", 1), ("😀a", 2)],
)
def test_estimate_is_utf8_bytes_over_four_rounded_up(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


# --- middle truncation -------------------------------------------------------------------------


def test_scenario_76_middle_truncation() -> None:
    text = "0123456789" * 8
    assert middle_truncate(text, 5) == "0123456789…15 tokens truncated…0123456789"


def test_scenario_76_budget_zero_leaves_only_the_marker() -> None:
    assert middle_truncate("0123456789" * 8, 0) == "…20 tokens truncated…"


def test_text_that_fits_is_unchanged() -> None:
    assert middle_truncate("abcdefgh", 2) == "abcdefgh"
    assert middle_truncate("", 0) == ""


def test_odd_split_keeps_more_at_the_end() -> None:
    # budget 1 = 4 bytes: 2 at the start, 2 at the end; 7 of 11 bytes removed -> 2 tokens
    assert middle_truncate("abcdefghijk", 1) == "ab…2 tokens truncated…jk"


def test_head_shrinks_back_and_tail_forward_to_character_boundaries() -> None:
    # "€" is 3 bytes: 2 head bytes split the first "€", 2 tail bytes split the last one.
    assert middle_truncate("€€€€€", 1) == "…4 tokens truncated…"
    # "é" is 2 bytes: with 4 + 4 bytes kept, the cuts fall on boundaries.
    assert middle_truncate("é" * 10, 2) == "éé…3 tokens truncated…éé"
    # 14 bytes: the head cut at byte 2 lands inside the first "€" (bytes 1-3), the tail cut at
    # byte 12 inside the last (bytes 10-12); both shrink: head "a", tail "b", 12 bytes removed.
    assert middle_truncate("a€€€€b", 1) == "a…3 tokens truncated…b"


def test_four_byte_characters() -> None:
    text = "😀" * 5  # 20 bytes
    assert middle_truncate(text, 2) == "😀…3 tokens truncated…😀"
    assert middle_truncate(text, 1) == "…5 tokens truncated…"


def test_negative_budget_is_zero() -> None:
    assert middle_truncate("abcdefgh", -3) == "…2 tokens truncated…"


def test_lone_surrogates_survive() -> None:
    text = "\ud800" * 10  # 3 bytes each as WTF-8
    assert estimate_tokens(text) == 8
    # 8 bytes kept at most: 4 + 4 shrink to one 3-byte surrogate at each end
    assert middle_truncate(text, 2) == "\ud800…6 tokens truncated…\ud800"


@given(st.text().filter(lambda s: "…" not in s), st.integers(min_value=0, max_value=40))
def test_truncation_keeps_a_prefix_and_suffix_within_the_budget(text: str, budget: int) -> None:
    result = middle_truncate(text, budget)
    if estimate_tokens(text) <= budget:
        assert result == text
        return
    head, marker_and_tail = result.split("…", 1)
    count, tail = marker_and_tail.split(" tokens truncated…", 1)
    assert text.startswith(head) and text.endswith(tail)
    kept = len(head.encode("utf-8", "surrogatepass")) + len(tail.encode("utf-8", "surrogatepass"))
    assert kept <= 4 * budget
    removed = len(text.encode("utf-8", "surrogatepass")) - kept
    assert int(count) == -(-removed // 4)


# --- items -------------------------------------------------------------------------------------


def test_all_text_items_that_fit_are_unchanged() -> None:
    items = (TextItem("abcd"), TextItem("efgh"))
    assert truncate_items(items, 3) == items  # "abcd\nefgh" is 9 bytes = 3 tokens


def test_all_text_items_over_budget_become_one_truncated_item() -> None:
    items = (TextItem("0123456789" * 4), TextItem("0123456789" * 4))
    joined = "\n".join(item.text for item in items)
    assert truncate_items(items, 5) == (TextItem(middle_truncate(joined, 5)),)
    assert truncate_items(items, 5) == (TextItem("0123456789…16 tokens truncated…0123456789"),)


def test_no_items() -> None:
    assert truncate_items((), 0) == ()


def test_images_are_free_and_texts_are_taken_in_order() -> None:
    items = (TextItem("abcd"), IMAGE, TextItem("efghijkl"), TextItem("mnop"), IMAGE)
    # budget 3: "abcd" fits (1), "efghijkl" fits (2), "mnop" gets 0 -> marker only
    assert truncate_items(items, 3) == (
        TextItem("abcd"),
        IMAGE,
        TextItem("efghijkl"),
        TextItem("…1 tokens truncated…"),
        IMAGE,
    )


def test_an_item_that_does_not_fit_is_truncated_to_what_is_left_and_uses_it() -> None:
    items = (IMAGE, TextItem("ab"), TextItem("0123456789" * 2), TextItem("x"), TextItem(""))
    assert truncate_items(items, 3) == (
        IMAGE,
        TextItem("ab"),
        TextItem("0123…3 tokens truncated…6789"),
        TextItem("…1 tokens truncated…"),
        TextItem(""),
    )


def test_images_only() -> None:
    assert truncate_items((IMAGE, IMAGE), 0) == (IMAGE, IMAGE)


# --- result format -----------------------------------------------------------------------------


def test_header_text() -> None:
    assert header_text("Script completed", 1.26) == (
        "Script completed\nWall time 1.3 seconds\nOutput:\n"
    )
    assert header_text("Script completed", -0.01) == (
        "Script completed\nWall time 0.0 seconds\nOutput:\n"
    )


def test_completed() -> None:
    items, is_error = format_result(Completed((TextItem("done"),)), "c1", 0.04, 10_000)
    assert items == (
        TextItem("Script completed\nWall time 0.0 seconds\nOutput:\n"),
        TextItem("done"),
    )
    assert is_error is False


def test_running() -> None:
    items, is_error = format_result(Yielded(()), "abc123", 10.0, 10_000)
    assert items == (
        TextItem("Script running with cell ID abc123\nWall time 10.0 seconds\nOutput:\n"),
    )
    assert is_error is False


def test_terminated() -> None:
    items, is_error = format_result(Terminated((TextItem("x"),)), "c1", 2.0, 10_000)
    assert items[0] == TextItem("Script terminated\nWall time 2.0 seconds\nOutput:\n")
    assert items[1:] == (TextItem("x"),)
    assert is_error is False


def test_failed_adds_the_error_item() -> None:
    event = Completed((TextItem("before"),), error_text="Error: boom\n    at <anonymous>")
    items, is_error = format_result(event, "c1", 0.25, 10_000)
    assert items == (
        TextItem("Script failed\nWall time 0.2 seconds\nOutput:\n"),
        TextItem("before"),
        TextItem("Script error:\nError: boom\n    at <anonymous>"),
    )
    assert is_error is True


def test_empty_error_text_is_still_a_failure() -> None:
    items, is_error = format_result(Completed((), error_text=""), "c1", 0.0, 10_000)
    assert items[0].text.startswith("Script failed\n")  # type: ignore[union-attr]
    assert items[-1] == TextItem("Script error:\n")
    assert is_error is True


def test_output_and_error_are_truncated_separately_to_the_same_budget() -> None:
    event = Completed((TextItem("0123456789" * 8),), error_text="abcdefghij" * 8)
    items, _ = format_result(event, "c1", 0.0, 5)
    assert items[1:] == (
        TextItem("0123456789…15 tokens truncated…0123456789"),
        TextItem("Script error:\nabcdefghij…15 tokens truncated…abcdefghij"),
    )


def test_budget_zero_leaves_markers_only() -> None:
    event = Completed((TextItem("0123456789" * 8),), error_text="e" * 8)
    items, _ = format_result(event, "c1", 0.0, 0)
    assert items[1:] == (
        TextItem("…20 tokens truncated…"),
        TextItem("Script error:\n…2 tokens truncated…"),
    )


# --- ToolResult --------------------------------------------------------------------------------


def test_tool_result_text_joins_items_and_shows_images() -> None:
    result = ToolResult(items=(TextItem("a"), IMAGE, TextItem("b")), is_error=False)
    assert result.text == "a\n[image]\nb"
    assert result.cell_id is None
    assert ToolResult((), True, "c1").text == ""


def test_tool_result_is_frozen() -> None:
    result = ToolResult((TextItem("a"),), False)
    with pytest.raises(AttributeError):
        result.is_error = True  # type: ignore[misc]
