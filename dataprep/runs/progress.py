"""Progress: a tqdm bar over input bytes with documents/s and tokens/s, and sizes for people."""

from __future__ import annotations

import time

from tqdm import tqdm


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


class Progress:
    """A tqdm bar over input bytes with documents/s and tokens/s, or nothing when disabled."""

    def __init__(self, total_bytes: int, enabled: bool, desc: str) -> None:
        self.start = time.perf_counter()
        self.documents = 0
        self.tokens = 0
        self.shards = ""
        self._done = self._total = 0
        self._bar = None
        if enabled:
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                             desc=desc, dynamic_ncols=True, smoothing=0.1)

    def update(self, source_bytes: int, documents: int, tokens: int) -> None:
        self.documents += documents
        self.tokens += tokens
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self._bar.set_postfix_str(f"{self.shards}{self.documents / elapsed:,.0f} docs/s, "
                                      f"{self.tokens / elapsed / 1e6:,.2f} M tok/s", refresh=False)
            self._bar.update(source_bytes)

    def resume(self, done_bytes: int, done_shards: int, total_shards: int) -> None:
        """Count shards finished by an earlier run as done (the bar shows shards done/total)."""
        self._done, self._total = done_shards, total_shards
        self.shards = f"shards {done_shards}/{total_shards}, "
        if self._bar is not None:
            self._bar.n = self._bar.initial = done_bytes  # tqdm's rate counts from `initial`
            self._bar.set_postfix_str(self.shards.rstrip(", "))

    def shard_done(self) -> None:
        self._done += 1
        self.shards = f"shards {self._done}/{self._total}, "
        self.update(0, 0, 0)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
