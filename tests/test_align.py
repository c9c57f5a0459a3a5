"""Cross-tokenizer alignment on hand-made tokenizations: coinciding boundaries, splits, merges, byte fallback,
special tokens by role, a dummy-prefix space, a cut answer, and texts that are not the same."""

from __future__ import annotations

import pytest

from litgpt_ext.kd.align import AlignmentError, Group, align


def pieces(*tokens):
    """Tokens as bytes; ``None`` stands for a special token."""
    return [t if t is None or isinstance(t, bytes) else t.encode() for t in tokens]


def spans(groups: list[Group], student, teacher):
    """Each group as the text it covers on each side (special tokens as ``<s>``)."""
    show = lambda side, ids: b"".join(side[i] or b"<s>" for i in ids).decode()  # noqa: E731
    return [(show(student, g.student), show(teacher, g.teacher)) for g in groups]


def test_coinciding_boundaries_pair_one_to_one():
    s = t = pieces("The", " cat", " sat", None)
    groups = align(s, t)
    assert [g.exact for g in groups] == [True] * 4
    assert [(g.student, g.teacher) for g in groups] == [((0,), (0,)), ((1,), (1,)), ((2,), (2,)), ((3,), (3,))]


def test_splits_and_merges_form_groups_where_both_sides_end_a_token():
    s = pieces("un", "believ", "able", " cat", "s", None)
    t = pieces("unbel", "ievable", " cats", None)
    groups = align(s, t)
    assert spans(groups, s, t) == [("unbelievable", "unbelievable"), (" cats", " cats"), ("<s>", "<s>")]
    assert groups[0] == Group((0, 1, 2), (0, 1))
    assert groups[1] == Group((3, 4), (2,))
    assert groups[2].exact


def test_byte_fallback_aligns_only_where_a_character_ends_on_both_sides():
    e = "é".encode()  # two bytes: one side spells it in byte pieces, the other as one token
    s = pieces("caf", e[:1], e[1:], " ok")
    t = pieces("ca", "fé", " ok")
    groups = align(s, t)
    assert spans(groups, s, t) == [("café", "café"), (" ok", " ok")]
    assert groups[0] == Group((0, 1, 2), (0, 1))


def test_special_tokens_pair_in_order_between_turns():
    s = pieces("Hi", None, "\n", "Bye", None)
    t = pieces("H", "i", None, "\nBye", None)
    groups = align(s, t)
    assert spans(groups, s, t) == [("Hi", "Hi"), ("<s>", "<s>"), ("\nBye", "\nBye"), ("<s>", "<s>")]


def test_a_sentencepiece_dummy_prefix_joins_the_first_group():
    s = pieces(" Paris", " is", None)  # SentencePiece: "▁Paris" for an answer that starts with "Paris"
    t = pieces("Par", "is", " is", None)
    groups = align(s, t)
    assert groups[0] == Group((0,), (0, 1))
    assert [g.exact for g in groups[1:]] == [True, True]


def test_a_cut_answer_aligns_its_common_prefix_only():
    s = pieces("The", " cat", " sat", None)
    t = pieces("The", " c")  # the teacher's answer was cut by its context
    assert align(s, t) == [Group((0,), (0,))]


def test_different_texts_are_refused_with_where_they_part():
    with pytest.raises(AlignmentError, match="byte 4"):
        align(pieces("The cat"), pieces("The dog"))


def test_a_missing_special_token_mid_answer_is_refused():
    with pytest.raises(AlignmentError):
        align(pieces("Hi", None, "Bye"), pieces("Hi", "Bye"))
