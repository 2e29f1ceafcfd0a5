"""{prefix}.rejects.jsonl: one line per bad record, with where and why (--skip-bad-records)."""

from __future__ import annotations

import json
import os


class Rejects:
    """Written under a temporary name and renamed when the run succeeds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tmp = path + ".tmp"
        self._file = open(self._tmp, "w", encoding="utf-8")

    def write(self, file: str, line: int, reason: str, record: str) -> None:
        entry = {"file": file, "line": line, "reason": reason, "record": record}
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def finalize(self) -> None:
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
