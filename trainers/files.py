"""The run directory: every file a run writes, so that a kill at any moment loses nothing.

    run_dir/config.json      the run's settings (written before training)
    run_dir/episodes.csv     one row per training step (appended; repaired on resumption)
    run_dir/history.csv      one row per epoch (appended; repaired on resumption)
    run_dir/backup/          while running: epoch-<n>.weights.h5 and its manifest epoch-<n>.json
    run_dir/model.keras      the trained model (also on Ctrl-C)
    run_dir/summary.json     written last: the run is finished
    (and a task's own files: eval.csv, evaluation.json, figures, tables)

Two kinds of writes, each safe against a kill at any byte:

- whole files (`atomic_path`, `write_text`, `write_bytes`, `save_model`): written to
  a temporary name `.tmp-*-<name>` in the same directory, flushed to disk (fsync),
  then renamed over the old file (one `rename(2)`) and the directory synced. A
  reader, or a resumed run, finds the old file or the new one, never a part.
- logs (`CsvLog`): rows appended, flushed and synced at every epoch end, before
  the backup of that epoch; a resumed run keeps the rows up to its backup and
  drops the rest, a row cut off by the kill included (`truncate_csv`).

The backup is a pair per epoch: the weights (with the optimizer's state and step)
and then a manifest holding their SHA-256. Only a manifest makes a backup count,
and the one before stays until the next is complete, so a kill while a backup is
written leaves the previous one whole; `restore_backup` takes the newest backup
whose weights match their manifest and load, and refuses with what it found when
none does (never starting again from episode 0 in silence).

Test hook: `HEBBKERAS_TEST_KILL_IN=PATTERN[@N]` SIGKILLs the process in the middle
of the N-th write (default the first) of a file whose name matches PATTERN (an
fnmatch pattern: `model.keras`, `epoch-*.weights.h5`, `*.csv`), after half of its
bytes (`hebbcli.kill_point`). Limits: docs/failure_paths.md.
"""

import contextlib
import csv
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile

import hebbcli

TEMP_PREFIX = ".tmp-"  # temporary files of atomic writes; left over only by a kill
BACKUP_DIR = "backup"
RUN_FILES = ("config.json", "summary.json", "model.keras", "episodes.csv", "history.csv")
RUN_DIRS = ("tensorboard", BACKUP_DIR)
_MANIFEST = re.compile(r"^epoch-(\d+)\.json$")


class RunError(ValueError):
    """A run cannot start or go on as asked; the message says why and what to do."""


# ------------------------------------------------------------------ whole files

def _sync_directory(directory):
    """Makes a rename in `directory` durable (where directories can be opened and synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _cut_in_half(path):
    """What a kill in the middle of writing `path` leaves: its first half."""
    def cut():
        os.truncate(path, os.path.getsize(path) // 2)
    return cut


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file is synced to disk before the rename, and the directory
    after it. On any exception (an interruption too) the temporary file is
    removed and `path` is left as it was. The temporary name ends with `path`'s
    name, for writers that check the extension (Keras's `.keras`, `.weights.h5`).
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{name}", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
    try:
        yield tmp
        _fsync_file(tmp)
        hebbcli.kill_point(name, _cut_in_half(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _sync_directory(directory)


def write_bytes(path, data):
    """Writes `data` (bytes) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    write_bytes(path, text.encode())


def write_json(path, value):
    """Writes `value` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def save_model(model, path):
    """`model.save(path)`, atomically: an interrupted save leaves the previous file whole."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def remove_temporaries(directory):
    """Removes what atomic writes killed midway left in `directory` (their temporary files)."""
    for path in glob.glob(os.path.join(glob.escape(directory), TEMP_PREFIX + "*")):
        with contextlib.suppress(OSError):
            os.remove(path)


def check_output_file(name, path):
    """Raises a ValueError unless a file can be written at `path` (flag `name`)."""
    if not str(path).strip():
        raise ValueError(f"{name} is empty: give the path of the file to write.")
    if os.path.isdir(path):
        raise ValueError(f"{name}={path} is a directory: give a file path, e.g. "
                         f"{os.path.join(path, 'figure.png')}.")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{name}={path} lies inside {existing}, which is a file: choose "
                         "another path.")


# ------------------------------------------------------------------ logs

class CsvLog:
    """A CSV log appended to row by row: `header` first if the file is new (or empty).

    `flush()` puts the rows on disk (fsync); until then a kill may lose them, and
    a resumed run drops any row after its backup anyway (`truncate_csv`).
    """

    def __init__(self, path, header):
        self.path = path
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="")
        if new:
            self.append(header)

    def append(self, row):
        line = _csv_line(row)
        hebbcli.kill_point(os.path.basename(self.path), lambda: self._partial(line))
        self._file.write(line)

    def _partial(self, line):
        self._file.write(line[: len(line) // 2])
        self._file.flush()

    def flush(self):
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self):
        if not self._file.closed:
            self.flush()
            self._file.close()


def _csv_line(row):
    class Line:
        def write(self, text):
            self.text = text

    line = Line()
    csv.writer(line, lineterminator="\n").writerow(row)
    return line.text


def append_row(path, row, header):
    """Appends one row to the CSV log at `path` (with `header` if it is new), on disk."""
    log = CsvLog(path, header)
    try:
        log.append(row)
    finally:
        log.close()


def read_rows(path):
    """The complete rows of a CSV log (a row cut off by a kill is left out), header first."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a row cut off by the interruption
    return [line for line in lines if line]


def truncate_csv(path, keep):
    """Keeps the header and the complete rows for which `keep(first field as a number)` holds."""
    if not os.path.exists(path):
        return
    lines = read_rows(path)
    rows = lines[:1] + [line for line in lines[1:] if keep(float(line.split(",")[0]))]
    write_text(path, "".join(line + "\n" for line in rows))


# ------------------------------------------------------------------ the backup

def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backups(backup_dir):
    """`[(epoch, manifest path)]` of the manifests in `backup_dir`, newest first."""
    if not os.path.isdir(backup_dir):
        return []
    found = [(int(m.group(1)), os.path.join(backup_dir, name))
             for name in os.listdir(backup_dir) for m in [_MANIFEST.match(name)] if m]
    return sorted(found, reverse=True)


def save_backup(model, backup_dir, epoch):
    """Backs up `model` (weights, optimizer state and step) as the state after `epoch` epochs.

    The weights first, then the manifest with their SHA-256 (both atomic); then
    backups older than the previous one go.
    """
    os.makedirs(backup_dir, exist_ok=True)
    stem = os.path.join(backup_dir, f"epoch-{epoch:06d}")
    with atomic_path(stem + ".weights.h5") as tmp:
        model.save_weights(tmp)
    write_json(stem + ".json", {
        "epoch": epoch, "steps": int(model.optimizer.iterations.numpy()),
        "weights": os.path.basename(stem) + ".weights.h5",
        "sha256": _sha256(stem + ".weights.h5")})
    for old_epoch, manifest in _backups(backup_dir)[2:]:
        for path in (manifest, manifest[: -len(".json")] + ".weights.h5"):
            with contextlib.suppress(OSError):
                os.remove(path)


def restore_backup(model, backup_dir):
    """Loads the newest usable backup in `backup_dir` into `model`; returns `(epoch, notes)`.

    `epoch` is 0 where there is no backup; `notes` are lines about backups that
    were passed over (cut off or damaged). The model must be built and compiled.

    Raises:
        RunError: `backup_dir` holds backups but none can be used (the message says
            what it found), or only a backup in an older format.
    """
    found = _backups(backup_dir)
    if not found:
        if os.path.exists(os.path.join(backup_dir, "latest.weights.h5")):
            raise RunError(
                f"{backup_dir} holds a backup in the format of earlier hebbkeras versions "
                "(latest.weights.h5, without a manifest), which this version does not resume. "
                "Pass --overwrite to start over there, or use another run_dir.")
        return 0, []
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    notes = []
    for epoch, manifest in found:
        name = os.path.basename(manifest)
        try:
            with open(manifest) as f:
                meta = json.load(f)
            weights = os.path.join(backup_dir, meta["weights"])
            steps, digest = int(meta["steps"]), meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            notes.append(f"{name} cannot be read ({type(e).__name__})")
            continue
        if not os.path.exists(weights):
            notes.append(f"{meta['weights']} is missing")
            continue
        if _sha256(weights) != digest:
            notes.append(f"{meta['weights']} does not match its manifest (cut off or damaged)")
            continue
        try:
            model.load_weights(weights)
        except Exception as e:  # noqa: BLE001 (h5py and Keras raise many kinds)
            notes.append(f"{meta['weights']} cannot be loaded ({type(e).__name__}: {e})")
            continue
        if int(model.optimizer.iterations.numpy()) != steps:
            notes.append(f"{meta['weights']} holds no optimizer state of step {steps}")
            continue
        return epoch, notes
    raise RunError(
        f"no backup in {backup_dir} can be used: {'; '.join(notes)}. The run cannot resume "
        "where it stopped. Pass --overwrite to start over there (its files are deleted), or "
        "use another run_dir.")


# ------------------------------------------------------------------ the directory

def remove(run_dir, names):
    """Removes the files and directories `names` of `run_dir` that exist."""
    for name in names:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def prepare_run_dir(run_dir, config, outputs=()):
    """Creates `run_dir` or checks that this run may continue there; returns whether it resumes.

    A finished run (its `summary.json` exists) is not trained again unless
    `config.overwrite`; an interrupted one (a `backup/`) resumes only with the same
    settings; anything else left by a run that never completed an epoch goes, and
    so do temporary files of writes a kill cut off. `outputs`: the task's own files.
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunError(f"run_dir {run_dir} is a file, not a directory: choose another run_dir.")
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise RunError(
            f"run_dir {run_dir} cannot be written ({e.strerror or e}): choose a directory "
            "you can write to.") from None
    ours = RUN_FILES + RUN_DIRS + tuple(outputs)
    config_path = os.path.join(run_dir, "config.json")
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        if not config.overwrite:
            raise RunError(
                f"{run_dir} holds a finished run (see its summary.json and model.keras). "
                "Choose another run_dir, or pass --overwrite to train there again from scratch "
                "(the finished run's files are deleted).")
        remove(run_dir, ours)
        return False
    remove_temporaries(run_dir)
    backup = os.path.join(run_dir, BACKUP_DIR)
    remove_temporaries(backup)
    if os.path.exists(backup) and os.path.exists(config_path) and not config.overwrite:
        with open(config_path) as f:
            previous = type(config).from_json(f.read())
        differences = config.differences(previous)
        if differences:
            raise RunError(
                f"{run_dir} holds the backup of an interrupted run with other settings: "
                f"{'; '.join(differences)}. Resume it with the same settings, use another "
                "run_dir, or pass --overwrite to start over there.")
        return True
    remove(run_dir, ours)  # a new run: what an earlier, unfinished start left goes
    return False
