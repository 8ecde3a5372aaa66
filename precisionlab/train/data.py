"""Training data: token arrays, their fingerprint, and random batches.

Three sources (`data.source`):
  stdlib  the default, no download: byte-level (vocab 256) text of the Python
          standard library's .py files. The stdlib differs between Python
          versions, so the fingerprint is per machine: runs record it.
  text    a user's text file, or every file matching `data.glob` in a folder
          (sorted), byte-level.
  tokens  nanoGPT-style pre-tokenized `train.bin` / `val.bin` (uint16) in the
          folder `data.path`, memory-mapped; `data.vocab_size` from config.

How stdlib and text are split (`data.split`):
  families  (default) whole families of near-duplicate files are held out, so train and
          validation come from one distribution and share no copied text. stdlib first
          samples files over the whole library in the order of a hash of their paths until
          `budget_bytes` (whole files). Near-duplicate files form families
          (precisionlab.train.shingles: files sharing more than 10% of their 4-line shingles
          with each other, such as the codec tables encodings/iso8859_*.py). A family is
          held out when a hash of its first path (with a salt) falls below `val_fraction`;
          then any held-out file sharing more than 10% of its shingles with the training
          files moves to training, so that no validation file does (run metadata:
          "max_val_shingle_share"). The salt is the first of 0, 1, ... whose validation
          files hold val_fraction of the bytes within a factor 1 ± 1/2 and whose train and
          validation unigram entropies agree within ENTROPY_TOLERANCE nats/byte (random
          file samples of the stdlib differ by up to 0.1: a few large files and families,
          such as codec tables, weigh much), so the split is a hash-random sample of
          families conditioned on matching byte statistics (if no salt of _SALTS does, the
          closest split found). A single text file has no files to hold out: its tail is
          (as `tail`).
  files   the split before families: each file held out on its own when
          a hash of its path (with a salt) falls below `val_fraction`, the salt the first
          of _FILE_SALTS whose unigram entropies agree within ENTROPY_TOLERANCE. It can hold
          out one codec table and train on its near-copies.
  tail    precisionlab 0.2's split: stdlib takes the first `budget_bytes` of the sorted
          paths (mostly `asyncio` … `encodings`, cached under `data.cache_dir`, else
          $PRECISIONLAB_CACHE, else $XDG_CACHE_HOME/precisionlab, else
          ~/.cache/precisionlab) and the last `val_fraction` of the bytes is validation:
          codec tables, another distribution than the training bytes.

Which files a Python installation holds differs between versions and builds (a Debian
python3.11 lacks the test package that a pyenv build has), so the stdlib corpus and its
fingerprint do too; scripts/corpus_info.py prints them for any interpreter, and the results
store keeps runs of one data config with different fingerprints apart (precisionlab.store.corpus).

The fingerprint is the sha256 of the token bytes (train then val); for
`.bin` files larger than 256 MiB it is the sha256 of their sizes and 16
evenly spaced 1 MiB chunks ("sampled"), to keep start-up fast. Byte-level sources
record each split's unigram entropy (nats/byte) in the run's metadata.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precisionlab.train.shingles import NearDuplicates

__all__ = ["DataError", "data_path", "check_data_size", "load_dataset", "get_batch", "build_stdlib_corpus", "cache_dir",
           "split_files", "unigram_entropy", "SOURCES", "SPLITS", "ENTROPY_TOLERANCE"]

SOURCES = ("stdlib", "text", "tokens")
SPLITS = ("families", "files", "tail")
ENTROPY_TOLERANCE = 0.02  # nats/byte between the train and validation files' unigram entropies
_SALTS = 2048             # salts tried before taking the best split found
_FILE_SALTS = 256         # ... by data.split=files (as it always did)
_FULL_HASH_LIMIT = 256 * 2**20


class DataError(ValueError):
    """A data setting the user must fix (missing path, empty corpus, ...)."""


def cache_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("PRECISIONLAB_CACHE"):
        return Path(os.environ["PRECISIONLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "precisionlab"


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources(root: Path | None = None) -> list[Path]:
    root = root or _stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def build_stdlib_corpus(budget_bytes: int, cache: Path) -> bytes:
    """The first `budget_bytes` of the stdlib's .py sources, concatenated; cached by Python version."""
    tag = f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-{budget_bytes}.bin"
    path = cache / tag
    if path.is_file():
        return path.read_bytes()
    chunks, size = [], 0
    for source in _stdlib_sources():
        if size >= budget_bytes:
            break
        data = source.read_bytes()
        chunks.append(data)
        size += len(data)
    corpus = b"".join(chunks)[:budget_bytes]
    if not corpus:
        raise DataError(f"no Python sources found under {sysconfig.get_paths()['stdlib']} for the default corpus")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=tag, suffix=".tmp", delete=False) as tmp:
            tmp.write(corpus)
        os.replace(tmp.name, path)
    except OSError:
        pass  # an unwritable cache only costs a rebuild next time
    return corpus


def _path_hash(name: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from a file's relative path: the same on every machine."""
    return int.from_bytes(hashlib.sha256(f"{salt}{name}".encode()).digest()[:8], "little") / 2**64


def sample_stdlib(budget_bytes: int, root: Path | None = None) -> list[tuple[str, bytes]]:
    """Whole stdlib .py files, (relative path, bytes), in the order of a hash of their paths
    until `budget_bytes` are reached: a sample spread over the whole library. `root`: another
    installation's stdlib folder (scripts/corpus_info.py), default this interpreter's."""
    root = root or _stdlib_root()
    named = [(p.relative_to(root).as_posix(), p) for p in _stdlib_sources(root)]
    docs, size = [], 0
    for name, path in sorted(named, key=lambda item: _path_hash(item[0])):
        if size >= budget_bytes:
            break
        data = path.read_bytes()
        if data:
            docs.append((name, data))
            size += len(data)
    if not docs:
        raise DataError(f"no Python sources found under {root} for the default corpus")
    return docs


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the distribution that token `counts` (a histogram) give."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def split_files(docs: list[tuple[str, bytes]], val_fraction: float, families: bool = True) -> tuple[bytes, bytes, dict[str, Any]]:
    """Hold out whole families of near-duplicate files (data.split=families), or whole files
    chosen one by one (data.split=files, the split before families); see the module docstring.
    (train bytes, validation bytes, what was done). Files keep their order within each split."""
    split = "families" if families else "files"
    if len(docs) < 2:
        raise DataError(f"data.split={split} needs at least 2 files to hold one out; found {len(docs)} "
                        "(use data.split=tail)")
    counts = np.stack([np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256) for _, data in docs])
    sizes = counts.sum(axis=1)
    if families:
        near = NearDuplicates([data for _, data in docs])
        first = {}  # a family's name: its first path in sorted order
        for (name, _), family in zip(docs, near.family):
            first[family] = min(first.get(family, name), name)
        units = [first[family] for family in near.family]
    else:
        units = [name for name, _ in docs]
    best = None
    for salt in range(_SALTS if families else _FILE_SALTS):
        held = [_path_hash(unit, f"val{salt}:") < val_fraction for unit in units]
        if families:
            held = near.keep_clear(held)
        if all(held) or not any(held):
            continue
        mask = np.array(held)
        val_counts, train_counts = counts[mask].sum(axis=0), counts[~mask].sum(axis=0)
        gap = abs(unigram_entropy(train_counts) - unigram_entropy(val_counts))
        off_size = families and abs(sizes[mask].sum() / sizes.sum() - val_fraction) > val_fraction / 2
        if best is None or (off_size, gap) < best[0]:
            best = ((off_size, gap), salt, held)
        if gap <= ENTROPY_TOLERANCE and not off_size:
            break
    if best is None:
        raise DataError(f"data.split={split} could not hold out a fraction {val_fraction} of {len(docs)} files "
                        "(use more files, another data.val_fraction or data.split=tail)")
    _, salt, held = best
    train = b"".join(data for (_, data), h in zip(docs, held) if not h)
    val = b"".join(data for (_, data), h in zip(docs, held) if h)
    meta = {"split": split, "salt": salt, "files": {"train": held.count(False), "val": held.count(True)}}
    if families:
        train_side = [not h for h in held]
        meta["families"] = len(set(near.family))
        meta["max_val_shingle_share"] = max(near.share(i, train_side) for i, h in enumerate(held) if h)
    return train, val, meta


def _split(data: bytes, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.frombuffer(data, dtype=np.uint8)
    n_val = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def _read_text(path: Path, pattern: str) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of a text file, or of a folder's files matching `pattern`, sorted."""
    if path.is_file():
        return [(path.name, path.read_bytes())]
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise DataError(f"data.path {str(path)!r} has no files matching data.glob={pattern!r}")
    return [(p.relative_to(path).as_posix(), p.read_bytes()) for p in files]


def _file_fingerprint(paths: list[Path]) -> tuple[str, str]:
    digest = hashlib.sha256()
    sizes = [p.stat().st_size for p in paths]
    if sum(sizes) <= _FULL_HASH_LIMIT:
        for p in paths:
            digest.update(p.read_bytes())
        return digest.hexdigest(), "sha256"
    chunk = 2**20
    for p, size in zip(paths, sizes):
        digest.update(size.to_bytes(8, "little"))
        with open(p, "rb") as f:
            for i in range(16):
                f.seek(max(0, (size - chunk) * i // 15))
                digest.update(f.read(chunk))
    return digest.hexdigest(), "sha256-sampled"


def check_data_size(data_cfg: Any, seq_len: int) -> None:
    """Cheap checks from file sizes alone (nothing read): data that is not a regular file or
    folder, or whose splits hold no window of seq_len + 1 tokens. Raises DataError, so
    `precisionlab train` refuses such data before it creates a run directory. The stdlib
    corpus is judged by its budget (an upper bound)."""
    cfg = dict(data_cfg) if isinstance(data_cfg, dict) else _to_dict(data_cfg)
    source, val_fraction = cfg.get("source", "stdlib"), float(cfg.get("val_fraction", 0.1))
    if source == "tokens":
        path = data_path(cfg)
        splits = {name: (path / f"{name}.bin").stat().st_size // 2 for name in ("train", "val")}
    else:
        if source == "stdlib":
            total = int(cfg.get("budget_bytes", 4_000_000))
        else:
            path = data_path(cfg)
            if path.is_file():
                total = path.stat().st_size
            elif path.is_dir():
                files = [p for p in path.glob(cfg.get("glob", "**/*.txt")) if p.is_file()]
                if not files:
                    raise DataError(f"data.path {str(path)!r} has no files matching data.glob={cfg.get('glob', '**/*.txt')!r}")
                total = sum(p.stat().st_size for p in files)
            else:
                raise DataError(f"data.path {str(path)!r} is not a regular file or folder (data=text reads bytes from files)")
        n_val = int(total * val_fraction)
        splits = {"train": total - n_val, "val": n_val}
    for split, tokens in splits.items():
        if tokens <= seq_len:
            raise DataError(f"the {split} split of data.source={source} has {tokens} tokens, fewer than "
                            f"train.seq_len + 1 = {seq_len + 1}; use more data or a shorter train.seq_len")


def load_dataset(data_cfg: Any, stdlib_root: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(train tokens, val tokens, meta) for a `data` config node; `stdlib_root`: the stdlib
    folder of another Python installation for data.source=stdlib (default this interpreter's).

    Tokens are 1-D numpy arrays (uint8 for bytes, uint16 memmaps for .bin);
    meta has source, path, fingerprint, fingerprint_kind, n_tokens (train,
    val) and vocab_size. Raises DataError for anything the user must fix.
    """
    cfg = dict(data_cfg) if isinstance(data_cfg, dict) else _to_dict(data_cfg)
    source, vocab_size = cfg.get("source", "stdlib"), int(cfg.get("vocab_size") or 256)
    if source not in SOURCES:
        raise DataError(f"data.source must be one of {', '.join(SOURCES)}; got {source!r}")
    val_fraction, split = float(cfg.get("val_fraction", 0.1)), cfg.get("split", "families")
    path, split_meta = None, {"split": "tail"}  # unless files are held out below
    if source == "tokens":
        path = data_path(cfg)
        files = [path / "train.bin", path / "val.bin"]
        for f in files:
            if f.stat().st_size < 4 or f.stat().st_size % 2:
                raise DataError(f"{str(f)!r} is not a uint16 token file (size {f.stat().st_size} bytes)")
        train, val = (np.memmap(f, dtype=np.uint16, mode="r") for f in files)
        fingerprint, kind = _file_fingerprint(files)
        split_meta = {}  # split by whoever wrote the files
    else:
        if source == "stdlib":
            budget = int(cfg.get("budget_bytes", 4_000_000))
            docs = sample_stdlib(budget, stdlib_root) if split != "tail" else [("", build_stdlib_corpus(budget, cache_dir(cfg.get("cache_dir"))))]
        else:
            path = data_path(cfg)
            docs = _read_text(path, cfg.get("glob", "**/*.txt"))
        if split != "tail" and len(docs) > 1:
            train_bytes, val_bytes, split_meta = split_files(docs, val_fraction, families=split == "families")
            train, val = np.frombuffer(train_bytes, dtype=np.uint8), np.frombuffer(val_bytes, dtype=np.uint8)
        else:  # data.split=tail, or one text file: the tail of the bytes
            train, val = _split(b"".join(data for _, data in docs), val_fraction)
        fingerprint, kind = hashlib.sha256(train.tobytes() + val.tobytes()).hexdigest(), "sha256"
        split_meta["unigram_entropy"] = {name: unigram_entropy(np.bincount(tokens, minlength=256))
                                         for name, tokens in (("train", train), ("val", val))}
    meta = {
        "source": source,
        "path": None if path is None else str(path),
        "fingerprint": fingerprint,
        "fingerprint_kind": kind,
        "n_tokens": {"train": int(len(train)), "val": int(len(val))},
        "vocab_size": vocab_size,
        **split_meta,
    }
    return train, val, meta


def _to_dict(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def data_path(data_cfg: Any) -> Path:
    """The existing file or folder `data.path` of a text or tokens `data` config (a tokens folder
    must hold train.bin and val.bin); DataError names what is missing. Config validation
    (precisionlab.config) and `load_dataset` both ask it."""
    source, value = data_cfg.get("source"), data_cfg.get("path")
    if value in (None, "", "???"):
        raise DataError(f"data={source} needs data.path=FILE_OR_FOLDER")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise DataError(f"data.path {str(value)!r} does not exist (data={source} expects a {'file or folder' if source == 'text' else 'folder with train.bin and val.bin'})")
    if source == "tokens":
        missing = [name for name in ("train.bin", "val.bin") if not (path / name).is_file()]
        if missing:
            raise DataError(f"data.path {str(path)!r} must be a folder with train.bin and val.bin (missing: {', '.join(missing)})")
    return path


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs x (B, T) and next-token targets y (B, T), int64, on CPU.

    Window starts are drawn from `generator`, so batches are a deterministic
    function of its state. Needs len(tokens) > seq_len.
    """
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator).tolist()
    windows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])  # (B, T+1)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]
