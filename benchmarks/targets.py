"""What the benchmarks share: contenders timed in turns, and the verdict column of their tables."""
import time


def take_turns(fns: dict, repeats: int) -> dict:
    """{name: fn} -> {name: [what each of its `repeats` calls returned]}. The calls take turns (a, b, a, b, ...),
    so a slow spell of the machine hits every contender alike."""
    got = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            got[name].append(fn())
    return got


def wall_times(fns: dict, repeats: int, args: tuple = ()) -> tuple[dict, dict]:
    """{name: fn} -> ({name: [wall time of each call of fn(*args)]}, {name: its last result}), taking turns."""
    def clocked(fn):
        def call():
            start = time.perf_counter()
            result = fn(*args)
            return time.perf_counter() - start, result
        return call
    got = take_turns({name: clocked(fn) for name, fn in fns.items()}, repeats)
    return {name: [s for s, _ in g] for name, g in got.items()}, {name: g[-1][1] for name, g in got.items()}


def verdict(ok: bool, quick: bool, missed: list, label: str) -> str:
    """'n/a (quick)' in a quick run (its sizes are too small to judge); otherwise 'ok', or 'MISSED' with label
    added to missed (the benchmark then exits 1)."""
    if quick:
        return "n/a (quick)"
    if not ok:
        missed.append(label)
    return "ok" if ok else "MISSED"
