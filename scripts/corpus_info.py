"""Which default corpus a Python installation gives: its fingerprint, files and entropies.

    python scripts/corpus_info.py [--python /usr/bin/python3 ...] [--budget-bytes N] [--val-fraction F]

The corpus (data.source=stdlib) is built from the stdlib folder of each interpreter named (default:
this one), asked with `python -I` so that a bare interpreter without numpy or torch will do; the
split runs here. Two installations give the same corpus exactly when their fingerprints agree; runs
record theirs (run.json, the results store's runs.meta), and the store refuses to mix runs of one
data config with different fingerprints (precisionlab.store.corpus).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from precisionlab.train.data import load_dataset, sample_stdlib, split_files
from precisionlab.train.shingles import NearDuplicates

_ASK = "import json, platform, sys, sysconfig; print(json.dumps([platform.python_version(), sys.executable, sysconfig.get_paths()['stdlib']]))"


def describe(python: str, budget_bytes: int, val_fraction: float) -> dict:
    version, executable, stdlib = json.loads(subprocess.run([python, "-I", "-c", _ASK], check=True,
                                                            capture_output=True, text=True).stdout)
    cfg = {"source": "stdlib", "budget_bytes": budget_bytes, "val_fraction": val_fraction}
    train, val, meta = load_dataset(cfg, stdlib_root=Path(stdlib))
    docs = sample_stdlib(budget_bytes, Path(stdlib))
    near = NearDuplicates([data for _, data in docs])
    val = bytes(split_files(docs, val_fraction)[1])
    held = {name for name, data in docs if data in val}  # whole files, so each held-out file is in there
    return {"python": version, "executable": executable, "stdlib": stdlib, "fingerprint": meta["fingerprint"],
            "sampled_files": len(docs), "files": meta["files"], "n_tokens": meta["n_tokens"],
            "families_of_several_files": sum(near.family.count(f) > 1 for f in set(near.family)),
            "unigram_entropy": {k: round(v, 4) for k, v in meta["unigram_entropy"].items()},
            "max_val_shingle_share": round(meta["max_val_shingle_share"], 4), "salt": meta["salt"],
            "names": [name for name, _ in docs], "held": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", nargs="+", default=[sys.executable], help="interpreters to describe")
    parser.add_argument("--budget-bytes", type=int, default=4_000_000)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    found = [describe(p, args.budget_bytes, args.val_fraction) for p in args.python]
    for info in found:
        print(json.dumps({k: v for k, v in info.items() if k not in ("names", "held")}))
    if len(found) == 2:
        (a, va), (b, vb) = ((set(info["names"]), info["held"]) for info in found)
        print(f"sampled files: {len(a)} and {len(b)}, {len(a & b)} in both; validation files in both: {len(va & vb)}; "
              f"validation in one and training in the other: {len((va & (b - vb)) | (vb & (a - va)))}")


if __name__ == "__main__":
    main()
