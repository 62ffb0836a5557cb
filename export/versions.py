"""The version directories of an export: path checks, staging, the switch, clean-up.

TensorFlow-free, so that the command line checks its paths before the slow import.

A version is written to a staging directory in the base directory,
`.tmp-<version>-<pid>.<host>-<random>` (TF Serving loads only integer names),
checked, and renamed to `<version>`. The number is claimed at that rename,
exclusively: `renameat2(RENAME_NOREPLACE)` (Linux), or elsewhere `mkdir` of
`<version>` (which fails if it exists) and a rename over that empty directory.
An export without a version number that finds its number taken (another export
into the same base directory finished first) takes the next free one, so
concurrent exports never share a version. Replacing a version (`--overwrite`)
swaps the two directories in one `renameat2(RENAME_EXCHANGE)` (Linux); where
that is not available, the old version is first moved aside to
`.old-<version>-<pid>.<host>-<random>/v`. Either way a reader of `<version>`
finds the old or the new version, never a part of one.

An export that was killed (SIGKILL, power cut) leaves its staging directory
behind; the next export into the same base directory removes those of exports
that are no longer running (this host and their pid is gone, or older than
`STALE_AGE`), and puts back a version that was moved aside but not replaced.
"""

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time

import hebbcli

STALE_AGE = 24 * 3600  # seconds; a staging directory of another host is stale after this
# This machine, as staging names carry it (a base directory may be shared between machines).
HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
# .tmp-<version>-<pid>.<host>-<8 random characters of tempfile.mkdtemp>
_STAGING = re.compile(r"^\.(tmp|old)-(\d+)-(\d+)\.(.+)-[a-z0-9_]{8}$")
_LEGACY = re.compile(r"^\.(tmp|old)-(\d+)-[a-z0-9_]{8}$")  # earlier exporters: no pid


def list_versions(export_dir):
    """The integer-named versions in `export_dir`, sorted ([] if it does not exist)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(d) for d in os.listdir(export_dir) if d.isdigit())


def next_version(export_dir):
    """1 + the largest integer-named version in `export_dir` (1 if none)."""
    versions = list_versions(export_dir)
    return max(versions) + 1 if versions else 1


def check_model_path(model_path):
    """Raises a ValueError unless `model_path` names a file."""
    if not model_path:
        raise ValueError("model is empty: pass RUN_DIR/model.keras of a training run.")
    if os.path.isdir(model_path):
        found = sorted(f for f in os.listdir(model_path) if f.endswith(".keras"))
        hint = (f"pass a .keras file in it: {', '.join(os.path.join(model_path, f) for f in found)}"
                if found else "pass the .keras file of a training run, RUN_DIR/model.keras")
        raise ValueError(f"model={model_path} is a directory; {hint}.")
    if not os.path.exists(model_path):
        raise ValueError(f"No model at {model_path}: pass RUN_DIR/model.keras of a training run.")


def check_export_dir(export_dir):
    """Raises a ValueError unless versions can be written to `export_dir`.

    Creates the missing directories and a scratch directory to find out, and
    removes them again: as root, `os.access` says yes where the kernel says no.
    """
    what = "the model's base directory MODELS/NAME (TF Serving's --model_base_path)"
    if not export_dir:
        raise ValueError(f"export_dir is empty: pass {what}.")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"export_dir={export_dir} is a file; pass {what}, a directory.")
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        raise ValueError(
            f"export_dir={export_dir} is itself a SavedModel (a version directory); "
            f"pass its parent, {os.path.dirname(os.path.abspath(export_dir))}, "
            "where versions are written as integer subdirectories."
        )
    existing = os.path.abspath(export_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"export_dir={export_dir} lies inside {existing}, which is a file; pass {what}.")
    created = []
    try:
        created = make_dirs(export_dir)
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=export_dir))
    except OSError as e:
        raise ValueError(
            f"Cannot write to export_dir={export_dir} ({e.strerror or e}: "
            f"{e.filename or export_dir}); pass a directory you can write to."
        ) from None
    finally:
        remove_if_empty(created)


def make_dirs(path):
    """Creates `path` and its missing parents; returns the ones it created, outermost first."""
    missing, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    missing.reverse()
    for d in list(missing):
        try:
            os.mkdir(d)
        except FileExistsError:  # made meanwhile by someone else: theirs, not ours
            if not os.path.isdir(d):
                raise
            missing.remove(d)
    return missing


def remove_if_empty(dirs):
    """Removes the directories `make_dirs` created, innermost first, if still empty."""
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            return


def make_staging(export_dir, version, kind="tmp"):
    """A new empty staging directory in `export_dir`, named after this process."""
    staging = tempfile.mkdtemp(prefix=f".{kind}-{version}-{os.getpid()}.{HOST}-", dir=export_dir)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide it from a server run as another user
    return staging


def commit(staging, export_dir, version, overwrite=False, next_free=False):
    """Renames the checked `staging` to `export_dir/<version>`; returns that path.

    A `version` that exists is replaced if `overwrite`, skipped for the next
    free number if `next_free` (the version was not asked for), and otherwise
    refused (a ValueError). Ctrl-C is held back until the switch is done; the
    old version is removed after it. A Ctrl-C that came earlier and was swallowed
    on the way (TensorFlow and Keras catch KeyboardInterrupt in places) stops
    the export here, before anything is switched.
    """
    if hebbcli.was_interrupted():
        raise KeyboardInterrupt
    old = None
    try:
        with _interrupts_held():
            while True:
                target = os.path.join(export_dir, str(version))
                if overwrite and os.path.exists(target):
                    old = _replace(staging, target)
                    break
                try:
                    _claim(staging, target)
                    break
                except FileExistsError:
                    if not next_free:
                        raise ValueError(
                            f"{target} was written by another export while this one ran "
                            f"(versions there: {list_versions(export_dir)}). Export again "
                            "without --version to write the next free one, or pass "
                            "--overwrite to replace it.") from None
                    version = max(version + 1, next_version(export_dir))
            hebbcli.kill_point("commit")
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _claim(staging, target):
    """Renames `staging` to `target`, which must not exist (FileExistsError if it does)."""
    if _renameat2(staging, target, _RENAME_NOREPLACE):
        return
    os.mkdir(target)  # exclusive: FileExistsError if another export has it
    try:
        os.rename(staging, target)  # over an empty directory: one atomic rename
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(target)
        raise


def _replace(staging, target):
    """Puts `staging` in place of the existing `target`; returns where the old version is."""
    if _renameat2(staging, target, _RENAME_EXCHANGE):
        return staging  # now holds the old version
    version = os.path.basename(target)
    old = make_staging(os.path.dirname(target), version, kind="old")
    os.rename(target, os.path.join(old, "v"))
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(os.path.join(old, "v"), target)
        os.rmdir(old)
        raise
    return old


def kill_in_tree(staging):
    """`hebbcli.kill_point` for each file written under `staging` (the test hook)."""
    for root, _, names in sorted(os.walk(staging)):
        for name in sorted(names):
            path = os.path.join(root, name)
            hebbcli.kill_point(name, lambda p=path: os.truncate(p, os.path.getsize(p) // 2))


def clean_stale(export_dir, now=None):
    """Removes staging directories of exports that stopped; returns what it did (lines).

    A `.old-<version>-...` directory whose version is missing (an export
    stopped between moving the old version aside and renaming the new one)
    is put back as `<version>`.
    """
    done = []
    if not os.path.isdir(export_dir):
        return done
    now = time.time() if now is None else now
    for name in sorted(os.listdir(export_dir)):
        path = os.path.join(export_dir, name)
        match = _STAGING.match(name)
        legacy = _LEGACY.match(name)
        if not (match or legacy) or not os.path.isdir(path):
            continue
        try:
            age = now - os.lstat(path).st_mtime
        except FileNotFoundError:  # removed meanwhile
            continue
        if match:
            pid, host = int(match.group(3)), match.group(4)
            mine = host == HOST
            if (mine and pid == os.getpid()) or (mine and _alive(pid)) or (not mine and age < STALE_AGE):
                continue  # a live export, or one we cannot tell about yet
            whose = f"pid {pid} on {host}" + ("" if mine else f", {age / 3600:.0f} h old")
        elif age < STALE_AGE:
            continue
        else:
            whose = f"{age / 3600:.0f} h old"
        kind, version = (match or legacy).group(1), (match or legacy).group(2)
        target, aside = os.path.join(export_dir, version), os.path.join(path, "v")
        if kind == "old" and os.path.isdir(aside) and not os.path.exists(target):
            os.rename(aside, target)
            done.append(f"Restored version {version} from {name} (an export stopped while replacing it; {whose}).")
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"Removed {name}, left by an export that stopped ({whose}).")
    return done


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(a, b, flag):
    """`renameat2(a, b, flag)` (Linux); False where this system or filesystem lacks it.

    Raises FileExistsError for RENAME_NOREPLACE onto an existing `b`.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flag) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this kernel or filesystem cannot
        return False
    if errno == 17:  # EEXIST
        raise FileExistsError(errno, os.strerror(errno), b)
    raise OSError(errno, os.strerror(errno), b)


@contextlib.contextmanager
def _interrupts_held():
    """Defers Ctrl-C (SIGINT) to the end of the block; only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if received:
            signal.raise_signal(signal.SIGINT)
