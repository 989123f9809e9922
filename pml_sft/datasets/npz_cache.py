import tempfile
from pathlib import Path

import numpy as np


def cached_arrays(path, build):
    """The dict of arrays cached at ``path`` (``.npz``); when it is missing,
    ``build()`` makes them and they are saved first. The file is written under a
    temporary name of this call's own and renamed atomically: callers preparing at
    the same time each write a whole file, and the last one wins."""
    path = Path(path)
    if not path.exists():
        data = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem, suffix=".tmp.npz", delete=False
        ) as tmp:
            np.savez_compressed(tmp, **data)
        Path(tmp.name).replace(path)
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
