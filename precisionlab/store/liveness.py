"""Who holds a run: the liveness rule for `running` rows, and the lease that keeps a claim alive.

A run is `running` from its claim until its outcome is written. Its row records the claimer's
host, pid, claim token and a heartbeat. Such a row is *interrupted* (rerunnable) when

- its heartbeat is older than the store's `stale_after` seconds, on any host and either
  backend (the lease below renews it every `stale_after / 4` seconds while the process
  lives, so only a dead, frozen or cut-off process lets it go stale), or
- it was claimed on this host by a process that is gone (a pid check, which notices a
  killed worker at once), or by this very process through a claim it no longer holds.

Heartbeats are the claimers' wall-clock times: hosts sharing a store need clocks that agree
to well within `stale_after` (NTP does).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from precisionlab.runtime import pid_alive
from precisionlab.store.database import Database
from precisionlab.store.schema import StoreError

__all__ = ["HOST", "LIVE_CLAIMS", "alive", "Lease"]

log = logging.getLogger(__name__)

HOST = socket.gethostname()
LIVE_CLAIMS: set[str] = set()  # claim tokens this process holds and has not finished


def alive(pid: int | None, hostname: str | None, heartbeat: float | None, token: str | None,
          now: float, stale_after: float) -> bool:
    """The liveness rule for a `running` row (see the module docstring)."""
    if heartbeat is None or now - heartbeat > stale_after:
        return False
    if hostname == HOST and pid is not None:
        if pid == os.getpid():
            return token in LIVE_CLAIMS
        return pid_alive(pid)
    return True


class Lease:
    """Renews the heartbeat of a run this process claimed, from a daemon thread, until `stop()`
    or until the claim is found taken over. Between beats the thread holds no connection, so
    a worker keeps one connection to a server, not two. `store`: the run's store (a ResultsStore),
    whose `stale_after` is given."""

    def __init__(self, store: Database, run_id: str, token: str, stale_after: float):
        self.store, self.run_id, self.token = store, run_id, token
        self.every = max(stale_after, 4.0) / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"precisionlab-lease-{run_id}", daemon=True)
        self._thread.start()

    def _beat(self, conn) -> int:
        return conn.execute("UPDATE runs SET heartbeat=? WHERE run_id=? AND claim=?",
                            (time.time(), self.run_id, self.token)).rowcount

    def _renew(self) -> None:
        while not self._stop.wait(self.every):
            try:
                held = self.store.write(self._beat)
            except StoreError as err:  # retried for the store's retry_seconds already
                log.warning("run %s: heartbeat not renewed: %s", self.run_id, err)
                return
            finally:
                self.store.close()  # this thread's connection
            if not held:  # taken over as interrupted: the run's next write says so
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
