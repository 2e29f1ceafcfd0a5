"""{prefix}.rejects.jsonl: one line per bad record, with where and why (--skip-bad-records)."""

from __future__ import annotations

import json
import os
from typing import Callable

from dataprep.errors import DataprepError


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


def report_rejects(rejects: Rejects | None, path: str, where: Callable[[int], int], rejected: list,
                   output_prefix: str) -> None:
    """A chunk's bad records (``.local`` line index, ``.reason``, ``.record``): fail fast on the
    first with FILE:LINE, or write each to the rejects file (``--skip-bad-records``)."""
    for bad in rejected:
        if rejects is None:
            raise DataprepError(f"{path}:{where(bad.local)}: {bad.reason} (pass --skip-bad-records to "
                                f"write bad records to {output_prefix}.rejects.jsonl and go on)")
        rejects.write(path, where(bad.local), bad.reason, bad.record)
