"""Checkpoint test helpers: a recorded micro run with a checkpoint, and a checkpoint file with one
weight changed (still loadable, no longer what its checksum says)."""

from __future__ import annotations

from pathlib import Path

from helpers import compose_train
from precisionlab.config import validate
from precisionlab.store import ResultsStore

__all__ = ["flip_a_weight_bit", "stored_run"]


def flip_a_weight_bit(path: Path) -> None:
    """Flip one exponent bit of a float in the largest tensor stored in checkpoint `path` (torch's zip
    stores tensors uncompressed): the file stays a loadable checkpoint, one weight changes."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 4 * (info.file_size // 8) + 3] ^= 0x40  # the high byte of a little-endian float32 in the middle
    path.write_bytes(bytes(data))


def stored_run(store: ResultsStore, checkpoint_dir: Path, *overrides: str):
    """A 10-step micro run recorded into `store`, checkpoint at step 4 -> (its config, its result)."""
    from precisionlab.run.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    cfg = validate(compose_train(*overrides, "train.checkpoint_steps=[4]", f"train.checkpoint_dir={checkpoint_dir}"))
    result = recorded_run(cfg, store, RunDirRecorder(checkpoint_dir.parent / "rundirs" / str(len(store.runs()))),
                          force=True)
    assert result.status == "completed"
    return cfg, result
