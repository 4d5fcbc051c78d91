"""Disk cache for judge outputs, keyed by a content hash of the audio plus the judge's identity.

Judges are deterministic given (audio samples, sample rate, judge name/version/settings), so a rerun
of `slm eval` over the same reconstructions is a dictionary lookup. SQLite (stdlib) because several
evaluation processes may share one cache directory at the same time; values are small JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from codec.runtime import cache_dir


def audio_hash(wav: np.ndarray, sample_rate: int) -> str:
    """sha256 of the float32 samples and the rate: identical audio -> identical key."""
    a = np.ascontiguousarray(np.asarray(wav, dtype=np.float32).reshape(-1))
    h = hashlib.sha256(str(int(sample_rate)).encode())
    h.update(a.tobytes())
    return h.hexdigest()


class JudgeCache:
    """``get_or_compute(judge_id, key, fn)``; ``path=None`` uses ``cache_dir()/judges.sqlite``.

    Set ``DUALSTREAM_NO_JUDGE_CACHE=1`` (or ``enabled=False``) to force recomputation.
    """

    def __init__(self, path: str | None = None, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = os.environ.get("DUALSTREAM_NO_JUDGE_CACHE", "") not in ("1", "true")
        self.enabled = enabled
        self.path = path or os.path.join(cache_dir(), "judges.sqlite")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS judge (judge TEXT, key TEXT, value TEXT, "
                             "PRIMARY KEY (judge, key))")
            self._db.commit()
        return self._db

    def get(self, judge_id: str, key: str) -> Any | None:
        if not self.enabled:
            return None
        with self._lock:
            row = self._conn().execute("SELECT value FROM judge WHERE judge=? AND key=?", (judge_id, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, judge_id: str, key: str, value: Any) -> None:
        if not self.enabled:
            return
        with self._lock:
            db = self._conn()
            db.execute("INSERT OR REPLACE INTO judge VALUES (?, ?, ?)", (judge_id, key, json.dumps(value)))
            db.commit()

    def get_or_compute(self, judge_id: str, key: str, fn: Callable[[], Any]) -> Any:
        value = self.get(judge_id, key)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        value = fn()
        self.put(judge_id, key, value)
        return value
