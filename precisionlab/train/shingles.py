"""Near-duplicate files, so that a held-out split does not hold copies of training text.

Definitions (bytes, no normalisation):
  line      a file's lines as `bytes.splitlines()` gives them (a final newline ends the last line).
  shingle   every run of 4 consecutive lines (a file of n >= 4 lines has n - 3; fewer lines, none).
            S(f) is the set of f's distinct shingles.
  share     of a file f with a set of files T: |S(f) ∩ (∪_{t in T} S(t))| / |S(f)|, the fraction of
            f's distinct shingles that occur somewhere in T (0 for a file without shingles).

Families: files a and b are near-duplicates when each shares more than MAX_SHARE of its shingles
with the other (min(share(a, {b}), share(b, {a})) > MAX_SHARE); a family is a connected group of
near-duplicates (e.g. the stdlib's single-byte codec tables, encodings/cp1254.py, iso8859_*.py, ...,
which share up to 90% of their shingles). Grouping by content rather than by folder keeps unrelated
files of one package (test/, email/, ...) apart, and finds copies across packages (io.py and _pyio.py).
The condition is symmetric on purpose: a tiny file made of boilerplate (`if __name__ == "__main__":
unittest.main()`) shares all its shingles with dozens of files, and linking by it would join them all
into one family.

Such one-sided overlaps are what `keep_clear` handles: after whole families are held out, any held-out
file that still shares more than MAX_SHARE with the training files moves to training, until none
does (moves only go that way, so this ends; a family moves as a whole, since its members share more than
MAX_SHARE with each other). Every held-out file then shares at most MAX_SHARE of its shingles with
the training side.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["MAX_SHARE", "shingles", "NearDuplicates"]

MAX_SHARE = 0.10        # of a held-out file's shingles that may occur in training files
_MAX_OWNERS_LINKED = 64  # shingles in more files than this are boilerplate, not evidence of a copy


def shingles(data: bytes) -> set[tuple[bytes, ...]]:
    """The distinct 4-line shingles of a file's bytes (see the module docstring)."""
    lines = data.splitlines()
    return {tuple(lines[i:i + 4]) for i in range(len(lines) - 3)}


class NearDuplicates:
    """Families and shared shingles of a list of files' contents."""

    def __init__(self, contents: list[bytes]):
        sets = [shingles(data) for data in contents]
        owners: dict[tuple, list[int]] = defaultdict(list)
        for i, s in enumerate(sets):
            for shingle in s:
                owners[shingle].append(i)
        self.sizes = [len(s) for s in sets]
        # per file, for each of its shingles found in other files too: the files that hold it
        self.shared: list[list[tuple[int, ...]]] = [[] for _ in sets]
        common: dict[tuple[int, int], int] = defaultdict(int)
        for files in owners.values():
            if len(files) < 2:
                continue
            for i in files:
                self.shared[i].append(tuple(files))
            if len(files) <= _MAX_OWNERS_LINKED:
                for a in files:
                    for b in files:
                        if a < b:
                            common[a, b] += 1
        parent = list(range(len(sets)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for (a, b), n in common.items():
            if n > MAX_SHARE * max(self.sizes[a], self.sizes[b]):
                parent[root(a)] = root(b)
        self.family = [root(i) for i in range(len(sets))]  # a family's id: one of its files' index

    def share(self, i: int, others: list[bool]) -> float:
        """share of file i with the files j where others[j] is true."""
        if not self.sizes[i]:
            return 0.0
        return sum(any(others[j] for j in files if j != i) for files in self.shared[i]) / self.sizes[i]

    def keep_clear(self, held: list[bool]) -> list[bool]:
        """`held` (True: held out) after moving held-out files that share more than MAX_SHARE
        with the rest to the rest, until none does."""
        held = list(held)
        moved = True
        while moved:
            moved = False
            train = [not h for h in held]
            for i in range(len(held)):
                if held[i] and self.share(i, train) > MAX_SHARE:
                    held[i], train[i], moved = False, True, True
        return held
