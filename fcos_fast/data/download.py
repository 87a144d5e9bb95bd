"""Download a dataset's official archives and unpack them where the configs look:
``python -m fcos_fast.data.download voc2007|coco2017 [--root data]``.

* ``voc2007``: ``VOCtrainval_06-Nov-2007.tar`` and ``VOCtest_06-Nov-2007.tar`` (from the
  Oxford VGG mirror torchvision uses, else the original Pascal host) into
  ``<root>/VOCdevkit/VOC2007`` (``voc_r18.yaml``);
* ``coco2017``: ``train2017.zip``, ``val2017.zip`` and ``annotations_trainval2017.zip``
  from images.cocodataset.org into ``<root>/coco/{train2017,val2017,annotations}``
  (``coco_r18.yaml``, ``coco_r50_1x.yaml``).

``<root>`` defaults to ``$FCOS_FAST_DATA`` or ``./data``; the archives are kept there
(``--remove-archives`` deletes each once unpacked). Every archive is checked against its
published MD5 (torchvision's for VOC; the ones COCO users have published since 2017, the
site itself publishes none). A download resumes where it stopped (HTTP ``Range``, into
``<file>.part``, renamed when complete and verified), after a cut connection or in a
later run. Unpacking goes into a temporary folder first, then into place, so a crash
never leaves half-written files; a marker file records each archive that was unpacked.
Without network, one line names the URLs and the folder to put the archives in; run the
command again then, and it verifies and unpacks them.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

from fcos_fast.data.common import data_home

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """An archive that cannot be downloaded, verified or unpacked; one line saying what
    to do."""


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset.

    Attributes:
        filename: its name (in ``<root>/`` once downloaded).
        urls: where to download it from, tried in order (mirrors).
        md5: its published MD5.
        unpack_to: the folder under ``<root>`` it is unpacked into.
        provides: paths under ``<root>`` that exist once it is unpacked (checked).
    """

    filename: str
    urls: tuple[str, ...]
    md5: str
    unpack_to: str
    provides: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's archives; unpacked, they give the folder ``folder`` under the root."""

    name: str
    folder: str
    archives: tuple[Archive, ...]


_VOC_MIRRORS = ("https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/",  # torchvision's
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/")  # the original host
_COCO = "http://images.cocodataset.org/"

#: The datasets ``python -m fcos_fast.data.download`` knows. VOC's MD5s are torchvision's
#: (``torchvision.datasets.voc``); COCO's are those published by its users (torchvision
#: for R, mlcommons' training scripts, ...).
DATASETS: dict[str, DatasetSource] = {
    "voc2007": DatasetSource("Pascal VOC 2007", "VOCdevkit", (
        Archive("VOCtrainval_06-Nov-2007.tar",
                tuple(m + "VOCtrainval_06-Nov-2007.tar" for m in _VOC_MIRRORS),
                "c52e279531787c972589f7e41ab4ae64", ".",
                ("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt",
                 "VOCdevkit/VOC2007/JPEGImages", "VOCdevkit/VOC2007/Annotations")),
        Archive("VOCtest_06-Nov-2007.tar",
                tuple(m + "VOCtest_06-Nov-2007.tar" for m in _VOC_MIRRORS),
                "b6e924de25625d8de591ea690078ad9f", ".",
                ("VOCdevkit/VOC2007/ImageSets/Main/test.txt",)),
    )),
    "coco2017": DatasetSource("COCO 2017", "coco", (
        Archive("annotations_trainval2017.zip",
                (_COCO + "annotations/annotations_trainval2017.zip",),
                "f4bbac642086de4f52a3fdda2de5fa2c", "coco",
                ("coco/annotations/instances_train2017.json",
                 "coco/annotations/instances_val2017.json")),
        Archive("val2017.zip", (_COCO + "zips/val2017.zip",),
                "442b8da7639aecaf257c1dceb8ba8c80", "coco", ("coco/val2017",)),
        Archive("train2017.zip", (_COCO + "zips/train2017.zip",),
                "cced6f7f71b7629ddf16f17bbcfab6b2", "coco", ("coco/train2017",)),
    )),
}

# What failing to reach a server raises: URLError, timeouts and resets are OSErrors;
# a malformed or cut response an HTTPException.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


def fetch(source: DatasetSource, root: str | os.PathLike, *, progress: bool = True,
          remove_archives: bool = False, attempts: int = 3, timeout: float = 30.0) -> Path:
    """Download, verify and unpack every archive of ``source`` under ``root``.

    Archives already unpacked (their marker file is there) are skipped; archives already
    in ``root`` are verified and unpacked without network.

    Returns:
        ``root / source.folder``.

    Raises:
        DownloadError: an archive could not be downloaded (the message names every
            missing archive, its URLs and the folder to put it in), fails its checksum,
            or does not unpack into the expected layout.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    unreachable: dict[Archive, str] = {}
    for archive in source.archives:
        if _marker(root, archive).is_file():
            continue
        path = root / archive.filename
        if path.is_file():
            _verify(path, archive.md5, progress=progress, remedy="delete it and run again")
        else:
            try:
                download(archive.urls, path, md5=archive.md5, progress=progress,
                         attempts=attempts, timeout=timeout)
            except _NETWORK_ERRORS as error:
                unreachable[archive] = " ".join(str(error).split())
                continue
        unpack(archive, path, root, progress=progress)
        if remove_archives:
            path.unlink()
    if unreachable:
        listing = "; ".join(f"{a.filename} from {' or '.join(a.urls)}" for a in unreachable)
        reason = next(iter(unreachable.values()))
        raise DownloadError(f"cannot download {source.name} ({reason}): put {listing} in "
                            f"{root.resolve()}/ and run this again to verify and unpack them")
    return root / source.folder


def download(urls: Sequence[str], destination: str | os.PathLike, *, md5: str,
             progress: bool = True, attempts: int = 3, timeout: float = 30.0) -> Path:
    """Download the first of ``urls`` that answers into ``destination``, verified.

    Bytes go to ``<destination>.part``; a download that stops (a cut connection, or an
    earlier run) resumes from there with an HTTP ``Range`` request, up to ``attempts``
    times per URL. Only a complete file whose MD5 is ``md5`` is renamed to
    ``destination``.

    Raises:
        OSError, http.client.HTTPException: no URL could be downloaded (the last error).
        DownloadError: the downloaded file fails its checksum (it is deleted).
    """
    destination = Path(destination)
    part = destination.with_name(destination.name + ".part")
    error: BaseException | None = None
    for url in urls:
        for attempt in range(attempts):
            try:
                _download_into(url, part, progress=progress, timeout=timeout)
            except _NETWORK_ERRORS as failure:
                error = failure
                if _resumable(failure) and attempt + 1 < attempts:
                    continue  # ask for the rest
                break  # the next mirror
            _verify(part, md5, progress=progress, delete=True, name=destination.name,
                    remedy="it was deleted; run again to download it anew")
            os.replace(part, destination)
            return destination
    assert error is not None, "no URL to download from"
    raise error


class _CutConnection(ConnectionError):
    """The server closed the connection before sending the whole file."""


def _resumable(error: BaseException) -> bool:
    """A failure during the transfer, after which asking for the rest may succeed (not a
    refused connection or an unknown host)."""
    return isinstance(error, (_CutConnection, http.client.HTTPException, ConnectionResetError,
                              TimeoutError))


def _download_into(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when ``part`` is absent or the
    server ignores ``Range``)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "fcos_fast"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except OSError as error:
        if getattr(error, "code", None) == 416:  # Range Not Satisfiable: ``part`` is whole
            return
        raise
    with response:
        resumed = offset and getattr(response, "status", None) == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = _progress_bar(progress, total=total, initial=offset, desc=part.name[:-5])
        received = offset
        with open(part, "ab" if resumed else "wb") as file, bar:
            while chunk := response.read(CHUNK):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _CutConnection(f"{url}: connection cut after {received} of {total} bytes")


def _verify(path: Path, md5: str, *, progress: bool, remedy: str, delete: bool = False,
            name: str | None = None) -> None:
    digest = hashlib.md5()
    with open(path, "rb") as file, _progress_bar(progress, total=path.stat().st_size,
                                                 desc=f"verify {name or path.name}") as bar:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != md5:
        if delete:
            path.unlink()
        raise DownloadError(f"{name or path.name} has MD5 {digest.hexdigest()}, not the published "
                            f"{md5} (a damaged or different file): {remedy}")


def unpack(archive: Archive, path: Path, root: Path, *, progress: bool = True) -> None:
    """Unpack ``path`` into ``root / archive.unpack_to``: first into a temporary folder
    beside it, checked to hold ``archive.provides``, then file by file into place (each a
    rename), then the marker."""
    target = root / archive.unpack_to
    staging = root / f".{archive.filename}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            _extract_all(path, staging, progress=progress)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
            raise DownloadError(f"cannot unpack {path} ({error}): delete it and run "
                                f"again") from None
        missing = [p for p in archive.provides
                   if not (staging / os.path.relpath(p, archive.unpack_to)).exists()]
        if missing:
            raise DownloadError(f"{path} has no {', '.join(missing)}: it is not the expected "
                                f"archive; delete it and run again")
        _move_tree(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _marker(root, archive).write_text(f"{archive.md5}\n")


def _extract_all(path: Path, into: Path, *, progress: bool) -> None:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # zipfile drops ".." and absolute parts
            for member in _progress_bar(progress, archive.infolist(), desc=f"unpack {path.name}"):
                archive.extract(member, into)
        return
    with tarfile.open(path) as archive:
        for member in _progress_bar(progress, archive, desc=f"unpack {path.name}"):
            archive.extract(member, into, filter="data")  # no links out, no absolute paths


def _move_tree(source: Path, target: Path) -> None:
    """Move every file under ``source`` to the same place under ``target`` (replacing
    what is there: a re-run after an interruption), merging folders."""
    for folder, _, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(Path(folder) / name, destination / name)


def _marker(root: Path, archive: Archive) -> Path:
    return root / f".{archive.filename}.unpacked"


def _progress_bar(enabled: bool, iterable=None, **kwargs):
    from tqdm import tqdm

    byte_bar = "total" in kwargs
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True,
                **({"unit": "B", "unit_scale": True, "unit_divisor": 1024} if byte_bar else {}),
                **kwargs)


def main(argv: list[str] | None = None, *,
         sources: Mapping[str, DatasetSource] = DATASETS) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.data.download",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(sources))
    parser.add_argument("--root", type=Path, default=None,
                        help=f"data folder (default: {data_home()})")
    parser.add_argument("--remove-archives", action="store_true",
                        help="delete each archive once it is unpacked")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        folder = fetch(sources[args.dataset], args.root or data_home(),
                       progress=not args.no_progress, remove_archives=args.remove_archives)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{sources[args.dataset].name} is in {folder}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
