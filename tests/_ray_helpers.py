"""Block sources for the Ray tests, importable by Ray's worker processes (tests/ is on their PYTHONPATH)."""

import os
from pathlib import Path


class KillOnce:
    """Wraps a block source; the first attempt at block `block` kills its worker process from inside the
    task (``os._exit``), keyed by a marker file so that the retry, in a new process, runs normally."""

    def __init__(self, source, marker_dir: str, block: int):
        self._source, self._marker, self._block = source, Path(marker_dir) / f"killed-{block}", block

    def __getattr__(self, name):
        return getattr(self._source, name)

    def produce(self, block, slots, progress=None):
        if block == self._block and not self._marker.exists():
            self._marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker dies in the middle of its first attempt at this block
        return self._source.produce(block, slots, progress=progress)


def killing_source(recipe: dict, marker_dir: str, block: int):
    """The CLI's own source for `recipe`, wrapped in :class:`KillOnce`."""
    from latent_balance.cli import _rebuild_sample_source

    return KillOnce(_rebuild_sample_source(recipe), marker_dir, block)
