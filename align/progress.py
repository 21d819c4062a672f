"""Progress of long runs (training steps, metric images, the gate's checks): a tqdm bar on a terminal, quiet
otherwise (CI logs keep their one summary line per run). ALIGN_PROGRESS=1 forces it on, 0 off."""
import os
import sys


def progress(iterable, desc, total=None):
    setting = os.environ.get("ALIGN_PROGRESS", "")
    enabled = setting == "1" or (setting != "0" and sys.stderr.isatty())
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
