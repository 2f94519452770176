"""Background WAL checkpoints for the SQLite store, off the intake path.

SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold: under load that COMMIT
copies megabytes into the database file and syncs it, and every webhook waiting on that group commit
waits too (100-200 ms ack spikes at 600 POST/s). Here the writer connection has autocheckpoint off and a
thread with its own connection checkpoints instead. PASSIVE checkpoints never take the write lock, so
intake goes on while pages are copied; a WAL that still grows past `restart_pages` (writes never pause
long enough for it to be reset) gets one blocking RESTART checkpoint, so the file stays bounded.

Every 50 ms, not every 0.5 s: each checkpoint ends with a sync of the database file, and under load a
sync of 0.5 s of pages (~4 MB at 1,600 POST/s) held intake commits for 30-100 ms (its journal commit);
a twentieth of that does not show (ack p99 per 2 s window at 1,600 POST/s: 30-100 ms -> 8-24 ms).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class WalCheckpointer:
    """A daemon thread that checkpoints `path` every `interval` seconds while it has frames to copy."""

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 0.05,
        restart_pages: int = 16384,  # 64 MB of 4 KB pages
        busy_timeout_seconds: float = 5.0,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_pages = restart_pages
        self.busy_timeout = busy_timeout_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after a last checkpoint, so a clean shutdown leaves a short WAL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error:
            log.exception("WAL checkpointer could not open %s; SQLite's own checkpoints are off", self.path)
            return
        try:
            # NORMAL syncs the WAL before copying and the database file after: as safe as autocheckpoint.
            conn.execute("PRAGMA synchronous=NORMAL")
            while True:
                stopping = self._stop.wait(self.interval)
                try:
                    self.checkpoint(conn)
                except sqlite3.Error as exc:  # busy or I/O trouble: the next round tries again
                    log.warning("WAL checkpoint failed: %s", exc)
                if stopping:
                    return
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        _, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages >= self.restart_pages:
            # Writes never paused long enough for the WAL to restart: make it, once, at the cost of a
            # short wait for writers.
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            log.info("WAL reached %d pages: restarted it", wal_pages)
