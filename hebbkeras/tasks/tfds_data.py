"""Loading a tfds dataset that may be missing, with one instructive error instead of retries.

`load_split` first reads a prepared copy; if there is none it downloads and
prepares it (from files in a manual directory when given), and when that
cannot work (downloading disabled, no network, files missing) it raises
`DataUnavailableError` at once with the ways to provide the data. tfds alone
would retry an unreachable download for minutes.
"""

import dataclasses
import os
import socket

LISTED_CHECKSUMS = "checksums.tsv"  # in a manual directory: its files' own checksums


class DataUnavailableError(RuntimeError):
    """A dataset is neither prepared nor obtainable; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A tfds dataset and the files its download needs.

    name, version: the tfds name and the version tfds prepares (for messages).
    title: how people call it ("CIFAR-10").
    urls: what tfds downloads; `manual_files`: their file names, which a
    manual directory must hold to prepare the data without a network.
    stand_in: a last line for the error when the data is missing (e.g. how to
    make an offline stand-in), or "".
    """

    name: str
    version: str
    title: str
    urls: tuple
    manual_files: tuple
    stand_in: str = ""


def load_split(source, split, data_dir=None, download=True, manual_dir=None, **load_kwargs):
    """`tfds.load(source.name, split=split)`, or a `DataUnavailableError` that says what to do.

    Args:
        source: a `Source`.
        split: a tfds split, e.g. "train" or "test[:100]".
        data_dir: a TFDS data directory (default: `TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        download: prepare the data (download and convert) if it is missing.
        manual_dir: a directory holding `source.manual_files`, used instead of the network.
        **load_kwargs: more arguments of `tfds.load` (e.g. `as_supervised`).
    """
    import tensorflow_datasets as tfds  # only the image tasks need it

    kwargs = dict(split=split, data_dir=data_dir, with_info=False, **load_kwargs)
    try:
        return tfds.load(source.name, download=False, **kwargs)
    except AssertionError:  # not prepared in data_dir
        pass
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    if not download:
        raise DataUnavailableError(instructions(source, where, "downloading is disabled"))
    default_manual = os.path.join(os.path.expanduser(where), "downloads", "manual")
    if manual_dir and not _holds_all(manual_dir, source.manual_files):
        raise DataUnavailableError(instructions(
            source, where, f"{manual_dir} does not hold {', '.join(source.manual_files)}"))
    manual = next((d for d in (manual_dir, default_manual)
                   if d and _holds_all(d, source.manual_files)), None)
    if manual is None:
        unreachable = [u for u in source.urls if not reachable(u)]
        if unreachable:
            raise DataUnavailableError(instructions(
                source, where, f"{unreachable[0]} cannot be reached from this machine"))
    config = tfds.download.DownloadConfig(manual_dir=manual)
    listed = manual and os.path.exists(os.path.join(manual, LISTED_CHECKSUMS))
    try:
        if listed:
            return _load_listed(tfds, source, manual, kwargs)
        return tfds.load(
            source.name, download=True,
            download_and_prepare_kwargs={"download_config": config}, **kwargs,
        )
    except Exception as e:  # any tfds failure: say what to do, keep the cause
        raise DataUnavailableError(
            instructions(source, where, f"preparing it failed ({type(e).__name__}: {e})")
        ) from e


def _load_listed(tfds, source, manual, kwargs):
    """Prepares from files whose checksums `manual/checksums.tsv` lists (a generated stand-in).

    tfds checks manual files against the checksums registered for the real
    data; for a stand-in (`hebbkeras.tasks.handwriting`) the directory lists
    its own, which replace the registered ones for this preparation only.
    """
    from tensorflow_datasets.core.download import checksums

    cls = tfds.builder_cls(source.name)
    listed = checksums.load_url_infos(os.path.join(manual, LISTED_CHECKSUMS))
    own = "url_infos" in vars(cls)
    saved = vars(cls).get("url_infos")
    cls.url_infos = {**(cls.url_infos or {}), **listed}  # replaces the class property
    try:
        builder = tfds.builder(source.name, data_dir=kwargs.pop("data_dir"))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual, try_download_gcs=False))
    finally:
        if own:
            cls.url_infos = saved
        else:
            del cls.url_infos
    kwargs.pop("with_info")
    return builder.as_dataset(**kwargs)


def _holds_all(directory, files):
    return all(os.path.exists(os.path.join(directory, f)) for f in files)


def reachable(url, timeout=5.0):
    """Whether a direct connection to `url`'s host opens (assumed yes behind a proxy)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def instructions(source, where, reason):
    """The ways to provide `source` when it is missing from `where` for `reason`."""
    files = " and ".join(source.manual_files)
    return (
        f"{source.title} (tfds '{source.name}', version {source.version}) is not prepared "
        f"in {where} and {reason}. Either:\n"
        f"  1. copy a prepared '{source.name}/{source.version}' directory (from a machine "
        f"where tfds.load('{source.name}') has run) into {where}, or point data_dir (or "
        f"TFDS_DATA_DIR) at the directory that holds it; or\n"
        f"  2. download {' and '.join(source.urls)} elsewhere, put {files} in a directory "
        f"and give it as manual_dir (or put it in {where}/downloads/manual); tfds then "
        f"prepares the data without a network; or\n"
        f"  3. run once with internet access (and downloading enabled)."
        + (f"\n{source.stand_in}" if source.stand_in else "")
    )
