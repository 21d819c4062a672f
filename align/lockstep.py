"""Several forward passes in lockstep: each output waits only for its counterparts, never for a whole run.

The sides (a torch and a Paddle forward; in float32 five of them) run in threads of their own but one at a
time: a baton goes round them, and each side runs until its next recorded module call (or its end), hands
what that call produced to a Rendezvous and passes the baton on. Each framework therefore runs as in a plain
forward pass (its own intra-op threads on every core, nothing running beside it), and the outputs of one
module are compared as soon as every side has produced them, where they lie in the frameworks' memory: a
side is paused until the baton comes back, so nothing overwrites them meanwhile. Only a value still waiting
when its side resumes (its counterpart comes later) is copied, into a reused buffer, since the side may then
overwrite it in place.

- A key that one side never produces, or produces in another order, is held until its counterpart comes or
  the other sides end; held copies count against ALIGN_MEMORY_GB and beyond it go to disk (align.store).
- Keys are (module, call, subkey) while the runs go: the final names ('name#k' for a module called more than
  once) need the reference run's call counts, known at its end (final_names).
- An exception on any side ends every side at its next module call (Aborted) and is raised by run() once all
  threads have stopped: nothing hangs waiting for a side that is gone.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from align.hooks import call_key
from align.store import BufferPool, TensorStore, release, reserve


class Aborted(Exception):
    """Raised in a side when another side failed: its forward stops at the next module call."""


class Baton:
    """Only the holder runs; pass_on() hands the baton to the next side still running, in rotation.
    on_enter / on_leave: {side: callable} around each of a side's turns (e.g. a process-wide kernel switch)."""

    def __init__(self, sides: list[str], on_enter: dict | None = None, on_leave: dict | None = None):
        self.rotation, self.alive = list(sides), set(sides)
        self.turn = self.rotation[0]
        self.error: BaseException | None = None
        self.active = dict.fromkeys(sides, 0.0)       # seconds each side held the baton
        self._cond = threading.Condition()
        self._on_enter, self._on_leave = on_enter or {}, on_leave or {}
        self._since, self._holder = 0.0, None

    def _next(self, side):
        i = self.rotation.index(side)
        for step in range(1, len(self.rotation) + 1):
            candidate = self.rotation[(i + step) % len(self.rotation)]
            if candidate in self.alive:
                return candidate
        return None

    def _leave(self, side):
        if self._holder != side:
            return
        self._holder = None
        self.active[side] += time.perf_counter() - self._since
        leave = self._on_leave.get(side)
        if leave is not None:
            leave()

    def _wait(self, side):
        """Under the lock: wait for this side's turn, then start it (raises Aborted if another side failed)."""
        while self.turn != side:
            self._cond.wait()
        if self.error is not None:
            raise Aborted()
        enter = self._on_enter.get(side)
        if enter is not None:
            enter()
        self._since, self._holder = time.perf_counter(), side

    def start(self, side):
        with self._cond:
            self._wait(side)

    def pass_on(self, side):
        """Called by the holder between two of its module calls."""
        with self._cond:
            self._leave(side)
            if self.error is None:
                self.turn = self._next(side)
                self._cond.notify_all()
            self._wait(side)

    def finish(self, side, error: BaseException | None = None):
        """A side ended (error: how); the baton goes on to the others."""
        with self._cond:
            self._leave(side)
            if error is not None and not isinstance(error, Aborted) and self.error is None:
                self.error = error
            self.alive.discard(side)
            if self.turn == side:
                self.turn = self._next(side)
            self._cond.notify_all()

    def abort(self, error: BaseException):
        with self._cond:
            if self.error is None:
                self.error = error
            self._cond.notify_all()


def run(jobs: dict[str, Callable[[Callable[[], None]], Any]], baton: Baton) -> dict[str, Any]:
    """Run job(pass_on) of every side in its own thread, one at a time (baton); job calls pass_on() between
    module calls. Returns {side: what its job returned}; raises the first exception a side raised."""
    results, threads = {}, []

    def body(side, job):
        error = None
        try:
            baton.start(side)
            results[side] = job(lambda: baton.pass_on(side))
        except BaseException as e:         # noqa: BLE001 - handed to the caller's thread below
            error = e
        finally:
            baton.finish(side, error)

    for side, job in jobs.items():
        threads.append(threading.Thread(target=body, args=(side, job), name=f"align-{side}", daemon=True))
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except BaseException as e:             # Ctrl-C in the caller: stop every side at its next module call
        baton.abort(e)
        for t in threads:
            t.join()
        raise
    if baton.error is not None:
        raise baton.error
    return results


class Rendezvous:
    """Per key, the value of every side, handed to complete(key, {side: array}) once each side has delivered
    it or ended. A delivered value is held as it is (a view of its side's tensor) until resume(side) says that
    side runs on; what is still waiting then is copied (BufferPool; to disk under `folder` beyond the memory
    budget). complete() gets arrays it must not keep (copy what it keeps). Not thread-safe: the baton
    serialises the calls."""

    def __init__(self, sides: list[str], complete: Callable[[Any, dict], None], folder=None,
                 pool: BufferPool | None = None):
        self.sides, self.complete = list(sides), complete
        self.pool = pool or BufferPool()
        self.folder = folder
        self.ended: set[str] = set()
        self._held: dict[Any, dict[str, Any]] = {}       # key -> {side: array, or the spill key}
        self._spill: TensorStore | None = None
        self._reserved = {}                              # id(array) -> bytes counted against the budget
        self._views: dict[str, list] = {side: [] for side in self.sides}   # keys held as views, per side
        self.duplicates = 0
        self.copied_bytes = 0

    def deliver(self, side: str, key: Any, value: np.ndarray) -> None:
        got = self._held.setdefault(key, {})
        if side in got:                                  # the same key twice from one side (collisions)
            self.duplicates += 1
            return
        if all(s in got or s in self.ended for s in self.sides if s != side):
            got[side] = value
            self._finish(key)
            return
        got[side] = value
        self._views[side].append(key)

    def resume(self, side: str) -> None:
        """The side runs on: copy its values that still wait."""
        for key in self._views[side]:
            got = self._held.get(key)
            if got is not None and side in got:
                got[side] = self._hold(got[side])
        self._views[side].clear()

    def end(self, side: str) -> None:
        """A side ended: every key that now has all it can get is completed."""
        self.ended.add(side)
        for key in [k for k, got in self._held.items() if all(s in got or s in self.ended for s in self.sides)]:
            self._finish(key)

    def close(self) -> None:
        for got in self._held.values():
            for value in got.values():
                self._drop(value)
        self._held.clear()
        if self._spill is not None:
            self._spill.close()
        self.pool.clear()

    def _hold(self, value):
        value = np.asarray(value)
        self.copied_bytes += value.nbytes
        if reserve(value.nbytes):
            copy = self.pool.copy(value)
            self._reserved[id(copy)] = value.nbytes
            return copy
        if self._spill is None:
            self._spill = TensorStore(self.folder)
        name = f"{len(self._spill)}"
        self._spill.put(name, value)
        return _Spilled(name)

    def _finish(self, key):
        got = self._held.pop(key)
        values = {s: (self._spill[v.name] if isinstance(v, _Spilled) else v) for s, v in got.items()}
        try:
            self.complete(key, values)
        finally:
            del values
            for value in got.values():
                self._drop(value)

    def _drop(self, value):
        if isinstance(value, _Spilled):
            self._spill.discard(value.name)
            return
        nbytes = self._reserved.pop(id(value), None)
        if nbytes is not None:
            release(nbytes)
            self.pool.give_back(value)


class _Spilled:
    def __init__(self, name):
        self.name = name


def final_key(key: tuple, counts: dict[str, int]) -> str:
    """The report key of (module, call, subkey), named as align.hooks names a run keyed by a reference run
    whose calls per module are `counts`."""
    name, call, sub = key
    base = call_key(name, call, max(counts.get(name, 1), call + 1))
    return f"{base}.{sub}" if sub else base


def final_names(keys_per_side: dict[str, list], counts: dict[str, int], outputs: dict[str, list[str]]
                ) -> dict | None:
    """{(module, call, subkey): report key} over every side's keys; None when two different keys of the runs
    would get the same report key (a module named like another's output subkey), where matching by report key,
    as the sequential runs do, is not matching by module call."""
    names, owner = {}, {}
    for side, keys in keys_per_side.items():
        for key in keys:
            if key not in names:
                names[key] = final_key(key, counts)
            if owner.setdefault(names[key], key) != key:
                return None
        for out in outputs.get(side, []):
            if owner.setdefault(out, ("output", out)) != ("output", out):
                return None
    return names
