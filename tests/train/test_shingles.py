"""Near-duplicate files (precisionlab.train.shingles), on small files whose shingles are counted by
hand: 4-line shingles, the symmetric family condition, shares, and `keep_clear` moving held-out files
that overlap the training side."""

from __future__ import annotations

from precisionlab.train.shingles import MAX_SHARE, NearDuplicates, shingles


def lines(prefix: str, start: int, stop: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(start, stop)]


def text(*parts: list[bytes]) -> bytes:
    return b"\n".join(line for part in parts for line in part) + b"\n"


# a: 40 lines, 37 shingles. b: a's first 10 lines then 30 of its own: 37 shingles, 7 of them a's
# (those starting at lines 0..6), so each shares 7/37 = 19% with the other: one family.
# c: nothing in common. d: 5 of a's lines, 2 shingles, both a's: d shares 100% with a, a 2/37 = 5% with d.
A = text(lines("a", 0, 40))
B = text(lines("a", 0, 10), lines("b", 0, 30))
C = text(lines("c", 0, 40))
D = text(lines("a", 20, 25))


def test_shingles_are_runs_of_four_lines():
    assert shingles(b"1\n2\n3\n4\n5\n") == {(b"1", b"2", b"3", b"4"), (b"2", b"3", b"4", b"5")}
    assert shingles(b"1\n2\n3\n4\n5") == shingles(b"1\n2\n3\n4\n5\n")  # a final newline ends the last line
    assert shingles(b"1\n2\n3\n") == set() and shingles(b"") == set()
    assert shingles(b"x\nx\nx\nx\nx\nx\n") == {(b"x",) * 4}  # distinct shingles only
    assert len(shingles(A)) == 37 and len(shingles(A) & shingles(B)) == 7 and shingles(D) <= shingles(A)


def test_families_need_a_large_share_on_both_sides():
    near = NearDuplicates([A, B, C, D])
    assert near.family[0] == near.family[1]  # 7/37 > MAX_SHARE both ways
    assert near.family[2] not in (near.family[0], near.family[3])
    assert near.family[3] != near.family[0]  # d shares all of its shingles with a, a only 2/37 with d
    assert 2 / 37 < MAX_SHARE < 7 / 37


def test_share_is_the_fraction_of_a_files_shingles_found_in_the_others():
    near = NearDuplicates([A, B, C, D])
    assert near.share(0, [False, True, False, False]) == 7 / 37
    assert near.share(0, [False, False, False, True]) == 2 / 37
    assert near.share(0, [False, True, True, True]) == 9 / 37  # b's 7 and d's 2 are different shingles
    assert near.share(3, [True, False, False, False]) == 1.0
    assert near.share(2, [True, True, False, True]) == 0.0
    assert NearDuplicates([b"one line\n", A]).share(0, [False, True]) == 0.0  # no shingles: share 0


def test_keep_clear_moves_held_out_files_that_overlap_training():
    near = NearDuplicates([A, B, C, D])
    assert near.keep_clear([False, False, False, True]) == [False] * 4  # d: all of it in a
    assert near.keep_clear([True, False, False, False]) == [False] * 4  # a: 7/37 in b
    assert near.keep_clear([False, False, True, False]) == [False, False, True, False]  # c overlaps nothing
    assert near.keep_clear([True, True, False, True]) == [True, True, False, True]  # the family and d held together
