import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np


def cached_arrays(path, build):
    """The dict of arrays cached at ``path`` (``.npz``); when it is missing,
    ``build()`` makes them and they are saved first. The file is written under a
    temporary name of this call's own and renamed atomically: callers preparing at
    the same time each write a whole file, and the last one wins."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the data set cache {path} is a folder, not a .npz file")
    if not path.exists():
        data = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem, suffix=".tmp.npz", delete=False
        ) as tmp:
            np.savez_compressed(tmp, **data)
        Path(tmp.name).replace(path)
    return load(path)


def load(path):
    """The arrays of the ``.npz`` at ``path``, or a ValueError that names the file
    and says how to rebuild it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(
            f"the data set cache {path} cannot be read ({type(err).__name__}: "
            f"{err}); delete it and build it again (download=True)"
        ) from None


def readable(path):
    """Whether the file at ``path`` is a whole ``.npz`` (not cut short, not empty,
    not another kind of file)."""
    try:
        load(path)
    except ValueError:
        return False
    return True
