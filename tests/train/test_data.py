"""Data: the embedded stdlib corpus, text and .bin loaders, batches, bad paths."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from precisionlab.train.data import DataError, get_batch, load_dataset


def test_the_0_2_tail_split_still_builds_offline_with_a_stable_fingerprint(tmp_path):
    cfg = {"source": "stdlib", "budget_bytes": 300_000, "val_fraction": 0.1, "split": "tail"}
    train, val, meta = load_dataset({**cfg, "cache_dir": str(tmp_path / "a")})
    assert list((tmp_path / "a").iterdir())  # cached
    again = load_dataset({**cfg, "cache_dir": str(tmp_path / "a")})[2]  # from the cache
    rebuilt = load_dataset({**cfg, "cache_dir": str(tmp_path / "b")})[2]  # built again from scratch
    assert meta["fingerprint"] == again["fingerprint"] == rebuilt["fingerprint"]
    corpus = bytes(train) + bytes(val)
    assert len(corpus) == 300_000 and len(val) == 30_000
    assert meta["fingerprint"] == hashlib.sha256(corpus).hexdigest()
    assert meta["vocab_size"] == 256 and meta["n_tokens"] == {"train": 270_000, "val": 30_000}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    first = min((p for p in stdlib.glob("*.py")), key=lambda p: p.name)  # '__future__.py' sorts before any folder file
    assert corpus.startswith(first.read_bytes()[:1000])
    other = load_dataset({**cfg, "budget_bytes": 200_000, "cache_dir": str(tmp_path / "a")})[2]
    assert other["fingerprint"] != meta["fingerprint"]


def test_text_file_and_folder(tmp_path):
    file = tmp_path / "one.txt"
    file.write_bytes(bytes(range(256)) * 4)
    train, val, meta = load_dataset({"source": "text", "path": str(file), "val_fraction": 0.25})
    assert bytes(train) + bytes(val) == file.read_bytes() and len(val) == 256
    assert meta["fingerprint"] == hashlib.sha256(file.read_bytes()).hexdigest()
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second " * 20)
    (folder / "a.txt").write_text("first " * 20)
    (folder / "sub" / "c.txt").write_text("third " * 20)
    (folder / "skip.bin").write_bytes(b"\x00" * 50)
    train, val, _ = load_dataset({"source": "text", "path": str(folder), "val_fraction": 0.1, "split": "tail"})
    assert bytes(train) + bytes(val) == ("first " * 20 + "second " * 20 + "third " * 20).encode()
    texts = {name: (folder / name).read_bytes() for name in ("a.txt", "b.txt", "sub/c.txt")}
    for split in ("families", "files"):  # the default, and single files (the split before families)
        train, val, meta = load_dataset({"source": "text", "path": str(folder), "val_fraction": 0.4, "split": split})
        assert meta["split"] == split and sum(meta["files"].values()) == 3
        held = [name for name, text in texts.items() if text in bytes(val)]  # whole files, in path order
        assert held and bytes(val) == b"".join(texts[n] for n in held)
        assert bytes(train) == b"".join(text for n, text in texts.items() if n not in held)
    assert load_dataset({"source": "text", "path": str(folder), "val_fraction": 0.4})[2]["split"] == "families"


def _entropy(tokens) -> float:
    """Unigram entropy in nats per byte, written out."""
    counts = np.bincount(np.asarray(tokens, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _shingles(text: bytes) -> set:
    """Every run of 4 consecutive lines (a final newline ends the last line), written out."""
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return {b"\n".join(lines[i:i + 4]) for i in range(len(lines) - 3)}


def _shares_with(held: dict[str, bytes], training: list[bytes]) -> dict[str, float]:
    """For each held-out file, the fraction of its distinct 4-line shingles found in any training file."""
    seen = set().union(*(_shingles(text) for text in training))
    return {name: len(_shingles(text) & seen) / len(_shingles(text)) if _shingles(text) else 0.0
            for name, text in held.items()}


def test_the_default_corpus_holds_out_whole_files_spread_over_the_library_with_matched_entropies():
    train, val, meta = load_dataset({"source": "stdlib"})
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = {p.relative_to(stdlib).as_posix(): p.read_bytes() for p in stdlib.rglob("*.py")
             if not {"site-packages", "dist-packages", "__pycache__"} & set(p.relative_to(stdlib).parts)}
    train_bytes, val_bytes = bytes(train), bytes(val)

    def whole_files(split: bytes) -> list[str]:
        """Which files the split is made of: it is their concatenation, file after file."""
        found, at = [], 0
        while at < len(split):
            match = [n for n, text in files.items() if text and split.startswith(text, at)]
            assert match, f"byte {at} does not start a stdlib file: the split is not whole files"
            name = max(match, key=lambda n: len(files[n]))
            found.append(name)
            at += len(files[name])
        return found

    held, kept = whole_files(val_bytes), whole_files(train_bytes)
    assert not set(held) & set(kept) and meta["files"] == {"train": len(kept), "val": len(held)}
    assert len(held) >= 10 and 0.05 < len(val_bytes) / (len(val_bytes) + len(train_bytes)) < 0.2
    # sampled over the whole library, not its alphabetical head
    packages = {name.split("/")[0] for name in kept + held}
    assert len(packages) >= 20 and any(n.startswith(("u", "x", "z")) for n in kept + held)
    h_train, h_val = _entropy(train), _entropy(val)
    assert abs(h_train - h_val) <= 0.05
    shares = _shares_with({name: files[name] for name in held}, [files[name] for name in kept])
    assert max(shares.values()) <= 0.10, sorted(shares.items(), key=lambda kv: -kv[1])[:3]
    assert meta["max_val_shingle_share"] == pytest.approx(max(shares.values()), abs=1e-12)
    assert meta["unigram_entropy"] == pytest.approx({"train": h_train, "val": h_val}, abs=1e-9)
    again = load_dataset({"source": "stdlib"})  # the same split every time
    assert bytes(again[1]) == val_bytes and again[2]["fingerprint"] == meta["fingerprint"]
    assert meta["fingerprint"] == hashlib.sha256(train_bytes + val_bytes).hexdigest()


_OTHER_STDLIBS = sorted({p.parent for p in Path("/usr/lib").glob("python3.*/os.py")}
                        - {Path(sysconfig.get_paths()["stdlib"])})


@pytest.mark.slow
@pytest.mark.parametrize("stdlib", _OTHER_STDLIBS or [None], ids=str)
def test_another_installations_corpus_keeps_its_codec_tables_apart_too(stdlib):
    """A Debian python3's stdlib (no test package, more codec tables in the sample) gave a
    validation encodings/iso8859_8.py sharing 79% of its shingles with a training iso8859_1.py."""
    if stdlib is None:
        pytest.skip("no other Python installation under /usr/lib")
    train, val, meta = load_dataset({"source": "stdlib"}, stdlib_root=stdlib)
    files = [p for p in stdlib.rglob("*.py") if not {"site-packages", "dist-packages", "__pycache__"} & set(p.parts)]
    texts = {p.relative_to(stdlib).as_posix(): p.read_bytes() for p in files}
    val_bytes, train_bytes = bytes(val), bytes(train)
    held = {n: t for n, t in texts.items() if len(t) > 200 and t in val_bytes}
    kept = [t for n, t in texts.items() if len(t) > 200 and n not in held and t in train_bytes]
    assert held and max(_shares_with(held, kept).values()) <= 0.10
    assert abs(_entropy(train) - _entropy(val)) <= 0.05


@pytest.mark.parametrize("folder", ["a", "b", "c", "d", "e", "f"])  # other paths, other hashes
def test_near_duplicate_files_stay_on_one_side_and_no_validation_file_shares_over_a_tenth(tmp_path, folder):
    rng = np.random.default_rng(7)
    root = tmp_path / folder
    root.mkdir()

    def lines(n: int) -> list[str]:
        return [" ".join(f"w{w}" for w in rng.integers(0, 10**6, 5)) for _ in range(n)]

    texts = {f"solo{i:02d}.txt": lines(30) for i in range(30)}
    table = lines(40)  # a family: eight copies of one table, each with two lines of its own
    texts.update({f"{folder}/table{i}.txt": table[:10] + lines(2) + table[12:] for i in range(8)})
    big = lines(400)  # part.txt repeats 20 lines of big.txt: half of part.txt, 5% of big.txt
    texts.update({"big.txt": big, "part.txt": big[100:120] + lines(20)})
    for name, text in texts.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text("\n".join(text) + "\n")
    files = {name: (root / name).read_bytes() for name in texts}
    train, val, meta = load_dataset({"source": "text", "path": str(root), "glob": "**/*.txt", "val_fraction": 0.35})
    held = [name for name in sorted(files) if files[name] in bytes(val)]
    kept = [name for name in sorted(files) if name not in held]
    assert bytes(val) == b"".join(files[n] for n in held) and bytes(train) == b"".join(files[n] for n in kept)
    assert held and len(held) < len(files)
    tables = {name in held for name in files if "table" in name}
    assert len(tables) == 1  # the whole family on one side
    shares = _shares_with({n: files[n] for n in held}, [files[n] for n in kept])
    assert max(shares.values()) <= 0.10, shares


def test_token_bin_files(tmp_path):
    rng = np.random.default_rng(0)
    train_ids, val_ids = rng.integers(0, 50257, 5000, dtype=np.uint16), rng.integers(0, 50257, 700, dtype=np.uint16)
    train_ids.tofile(tmp_path / "train.bin")
    val_ids.tofile(tmp_path / "val.bin")
    train, val, meta = load_dataset({"source": "tokens", "path": str(tmp_path), "vocab_size": 50304})
    assert np.array_equal(train, train_ids) and np.array_equal(val, val_ids)
    assert meta["vocab_size"] == 50304
    assert meta["fingerprint"] == hashlib.sha256(train_ids.tobytes() + val_ids.tobytes()).hexdigest()
    x, y = get_batch(train, 3, 8, torch.Generator().manual_seed(0))
    assert x.dtype == torch.int64 and int(x.max()) < 50257


def test_batches_are_next_token_windows_and_seeded():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)  # targets are the next tokens
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))  # contiguous windows
    again, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    other, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(x, again) and not torch.equal(x, other)


@pytest.mark.parametrize("cfg, message", [
    ({"source": "text", "path": "/no/such/file.txt"}, "does not exist"),
    ({"source": "text"}, "needs data.path"),
    ({"source": "tokens", "path": "HERE"}, "missing: val.bin"),
    ({"source": "text", "path": "HERE"}, "no files matching"),
    ({"source": "web"}, "data.source must be one of"),
])
def test_bad_data_settings_are_user_errors(tmp_path, cfg, message):
    (tmp_path / "train.bin").write_bytes(b"\x01\x00" * 10)
    if cfg.get("path") == "HERE":
        cfg = {**cfg, "path": str(tmp_path)}
    with pytest.raises(DataError, match=message):
        load_dataset(cfg)
