"""A build-once cache of generated datasets (images + COCO json) keyed by their sources."""
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Iterable

logger = logging.getLogger(__name__)


def cache_root() -> str:
    """Folder for generated datasets: $FOCAL_RPN_CACHE, else ~/.cache/focal_rpn."""
    return os.environ.get("FOCAL_RPN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "focal_rpn"))


def source_key(files: Iterable[str], params: dict) -> str:
    """A short hash of the source files' contents and the build parameters."""
    h = hashlib.sha1(json.dumps(params, sort_keys=True).encode())
    for path in files:
        with open(path, "rb") as f:
            h.update(hashlib.sha1(f.read()).digest())
    return h.hexdigest()[:12]


def build_cached(name: str, key: str, build: Callable[[str], None]) -> str:
    """Returns the cache folder for (name, key), calling ``build(folder)`` once to fill it.

    Builds into a temporary folder then renames it, so that concurrent workers (distributed
    training) and interrupted builds never leave a half-written dataset behind.
    """
    final = os.path.join(cache_root(), name, key)
    if os.path.isfile(os.path.join(final, "DONE")):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}-", dir=os.path.dirname(final))
    try:
        build(tmp)
        open(os.path.join(tmp, "DONE"), "w").close()
        try:
            os.rename(tmp, final)
            logger.info("Built dataset %s in %s", name, final)
        except OSError:  # another process finished first
            if not os.path.isfile(os.path.join(final, "DONE")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
