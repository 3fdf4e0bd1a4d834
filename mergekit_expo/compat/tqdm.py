"""tqdm, as the CLI edge needs it: whether a progress bar is still open (its line not ended
yet), so that an error line starts on a line of its own rather than after the bar.

tqdm 4.x keeps every open bar, its subclasses' too, in the class attribute
``tqdm.std.tqdm._instances``; a tqdm without it shows no open bar here, and the line is
printed as it is.
"""

import sys


def bar_in_progress() -> bool:
    module = sys.modules.get("tqdm.std")
    if module is None:  # tqdm was never imported: no bar was drawn
        return False
    return any(not getattr(bar, "disable", False) for bar in list(getattr(module.tqdm, "_instances", ())))
