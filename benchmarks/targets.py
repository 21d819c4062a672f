"""The verdict column shared by the benchmarks' tables."""


def verdict(ok: bool, quick: bool, missed: list, label: str) -> str:
    """'n/a (quick)' in a quick run (its sizes are too small to judge); otherwise 'ok', or 'MISSED' with label
    added to missed (the benchmark then exits 1)."""
    if quick:
        return "n/a (quick)"
    if not ok:
        missed.append(label)
    return "ok" if ok else "MISSED"
