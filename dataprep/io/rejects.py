"""{prefix}.rejects.jsonl: one line per bad record, with where and why (--skip-bad-records)."""

from __future__ import annotations

import json

from dataset_engine.idxmap import AtomicFile


class Rejects(AtomicFile):
    """Written under a temporary name and renamed when the run succeeds (`finalize`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "w", durable=False)  # rebuilt from the shards if lost in a crash

    def write(self, file: str, line: int, reason: str, record: str) -> None:
        entry = {"file": file, "line": line, "reason": reason, "record": record}
        super().write(json.dumps(entry, ensure_ascii=False) + "\n")

    def finalize(self) -> None:
        self.commit()
