"""Writing the files a user keeps so that each is always the old version or the new one."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path` in one rename.

    On any exception (an interruption too) the temporary file is removed and
    `path` is left as it was. The temporary name keeps `path`'s extension, for
    writers that check it (Keras's `.keras`).
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=os.path.splitext(name)[1], dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def save_model(model, path):
    """`model.save(path)`, atomically: an interrupted save leaves the previous file whole."""
    with atomic_path(path) as tmp:
        model.save(tmp)
