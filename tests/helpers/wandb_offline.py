"""Reading a W&B offline run back: its `run-ID.wandb` file, record by record, parsed with wandb's own protobuf.

wandb >= 0.20 ships no Python reader of its run files (wandb.sdk.internal.datastore, which read them, is
gone; `wandb sync` reads them in Go). The file is W&B's documented "datastore" format: the header
`:W&B`, magic 0xBEE1, version 0 (7 bytes), then LevelDB's log format: 32 KiB blocks of chunks, each a
7-byte header (CRC-32 of the type byte then the data, little-endian uint16 length, type FULL=1,
FIRST=2, MIDDLE=3, LAST=4) and its data; a block's tail of fewer than 7 bytes is padding. Each whole
record is one `wandb_internal_pb2.Record` (wandb's own message type). The CRCs are checked, so a
misread file fails rather than yields garbage.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    """Every Record of the run file `path`, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:7] == HEADER, f"{path} is no W&B run file"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        if kind == 0 and length == 0:  # zeros at the end of a block the writer left unfilled
            pos += left
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad CRC at {pos} in {path}"
        pos += 7 + length
        if kind == FULL:
            whole = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            assert kind == LAST, f"unknown chunk type {kind} at {pos} in {path}"
            whole, pending = pending + chunk, b""
        record = pb.Record()
        record.ParseFromString(whole)
        out.append(record)
    return out


def history(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged series of the run file: name -> [(step, value)], from its history records."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
        step = items.pop("_step")
        for key, value in items.items():
            if not key.startswith("_"):
                series.setdefault(key, []).append((int(step), float(value)))
    return series


def config(path: str | Path) -> dict:
    """The run's config as its records last set it (W&B wraps each value as {"value": ...})."""
    found = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            found.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif record.WhichOneof("record_type") == "config":
            found.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return {k: v.get("value", v) if isinstance(v, dict) else v for k, v in found.items() if not k.startswith("_")}


def run_info(path: str | Path) -> dict:
    """The run record's id, project, group and display name."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            r = record.run
            return {"id": r.run_id, "project": r.project, "group": r.run_group, "name": r.display_name}
    raise AssertionError(f"{path} has no run record")
