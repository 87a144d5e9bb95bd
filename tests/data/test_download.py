"""``python -m fcos_fast.data.download``: download with resume, published checksums,
unpacking into the configs' layout, and the offline message.

The archives are small ones made here (a VOC-like pair of tars, COCO-like zips that the
datasets then load), served from 127.0.0.1 by a tiny HTTP server with ``Range`` support
that can cut a connection half-way; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import torchvision.datasets.voc
from PIL import Image

from fcos_fast.config import load_config
from fcos_fast.data import VOCDetection, build_dataset, download
from fcos_fast.data.download import DATASETS, Archive, DatasetSource, DownloadError, fetch


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut_next: set[str] = set()  # paths whose next full answer stops half-way
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` (206) or without (200); a cut sends half the body
    under the full ``Content-Length`` and closes the connection."""

    def do_GET(self):
        server: _Server = self.server
        name = self.path.lstrip("/")
        server.requests.append((name, self.headers.get("Range")))
        if name not in server.files:
            self.send_error(404)
            return
        data, start = server.files[name], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in server.cut_next:
            server.cut_next.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _unreachable_url(name: str) -> str:
    """A URL on a local port nothing listens on: refused at once, no network involved."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _jpeg(width=40, height=30) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def _voc_xml(name: str) -> bytes:
    return (f"<annotation><size><width>40</width><height>30</height></size><object>"
            f"<name>{name}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>4</ymin>"
            f"<xmax>30</xmax><ymax>25</ymax></bndbox></object></annotation>").encode()


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _voc_archives() -> dict[str, bytes]:
    """Two tars that unpack, like VOC 2007's, into one VOCdevkit/VOC2007 tree."""
    base = "VOCdevkit/VOC2007/"
    trainval = _tar({base + "ImageSets/Main/trainval.txt": b"000005\n",
                     base + "Annotations/000005.xml": _voc_xml("dog"),
                     base + "JPEGImages/000005.jpg": _jpeg()})
    test = _tar({base + "ImageSets/Main/test.txt": b"000001\n",
                 base + "Annotations/000001.xml": _voc_xml("cat"),
                 base + "JPEGImages/000001.jpg": _jpeg()})
    return {"VOCtrainval_06-Nov-2007.tar": trainval, "VOCtest_06-Nov-2007.tar": test}


def _voc_source(archives: dict[str, bytes], url) -> DatasetSource:
    """The shipped VOC table with the test's archives, URLs and checksums."""
    shipped = DATASETS["voc2007"]
    return DatasetSource(shipped.name, shipped.folder, tuple(
        Archive(a.filename, (url(a.filename),), _md5(archives[a.filename]), a.unpack_to,
                a.provides) for a in shipped.archives))


def test_voc_downloads_and_unpacks_into_the_configs_layout(server, tmp_path):
    server.files.update(_voc_archives())
    folder = fetch(_voc_source(server.files, server.url), tmp_path, progress=False)
    assert folder == tmp_path / "VOCdevkit"
    assert VOCDetection(folder, "trainval").class_names[11] == "dog"
    assert len(VOCDetection(folder, "test")) == 1
    config = load_config("voc_r18.yaml", [f"data.root={folder}"])
    assert len(build_dataset(config, "test")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".VOCtest_06-Nov-2007.tar.unpacked", ".VOCtrainval_06-Nov-2007.tar.unpacked",
        "VOCdevkit", "VOCtest_06-Nov-2007.tar", "VOCtrainval_06-Nov-2007.tar"]
    # A second run finds everything done and asks the server nothing.
    asked = len(server.requests)
    fetch(_voc_source(server.files, server.url), tmp_path, progress=False)
    assert len(server.requests) == asked


def test_coco_downloads_and_unpacks_into_the_configs_layout(server, tmp_path):
    instances = {"images": [{"id": 1, "file_name": "000000000001.jpg", "width": 40,
                             "height": 30}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 18,
                                  "bbox": [5, 4, 20, 20]}],
                 "categories": [{"id": 18, "name": "dog"}]}
    archives = {
        "annotations_trainval2017.zip": _zip({
            "annotations/instances_train2017.json": json.dumps(instances).encode(),
            "annotations/instances_val2017.json": json.dumps(instances).encode()}),
        "val2017.zip": _zip({"val2017/000000000001.jpg": _jpeg()}),
        "train2017.zip": _zip({"train2017/000000000001.jpg": _jpeg()}),
    }
    server.files.update(archives)
    shipped = DATASETS["coco2017"]
    source = DatasetSource(shipped.name, shipped.folder, tuple(
        Archive(a.filename, (server.url(a.filename),), _md5(archives[a.filename]),
                a.unpack_to, a.provides) for a in shipped.archives))
    folder = fetch(source, tmp_path, progress=False, remove_archives=True)
    assert folder == tmp_path / "coco"
    assert sorted(p.name for p in folder.iterdir()) == ["annotations", "train2017", "val2017"]
    config = load_config("coco_r18.yaml", [f"data.root={folder}"])
    for split in ("train2017", "val2017"):
        assert build_dataset(config, split).class_names == ["dog"]
    assert not list(tmp_path.glob("*.zip"))  # --remove-archives


def test_a_cut_connection_resumes_with_a_range_request(server, tmp_path):
    data = bytes(range(256)) * 4000  # 1 MB
    server.files["big.bin"] = data
    server.cut_next.add("big.bin")
    path = download.download([server.url("big.bin")], tmp_path / "big.bin", md5=_md5(data),
                             progress=False)
    assert path.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    assert server.requests == [("big.bin", None), ("big.bin", f"bytes={len(data) // 2}-")]


def test_a_partial_file_of_an_earlier_run_is_resumed(server, tmp_path):
    data = b"0123456789" * 1000
    server.files["file.bin"] = data
    (tmp_path / "file.bin.part").write_bytes(data[:3000])
    download.download([server.url("file.bin")], tmp_path / "file.bin", md5=_md5(data),
                      progress=False)
    assert (tmp_path / "file.bin").read_bytes() == data
    assert server.requests == [("file.bin", "bytes=3000-")]


def test_a_file_url_and_the_next_mirror(tmp_path):
    """``file://`` works (no Range there: it starts over); a dead mirror is skipped."""
    data = b"archive bytes" * 100
    source = tmp_path / "mirror" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(data)
    (tmp_path / "file.bin.part").write_bytes(b"stale")
    download.download([_unreachable_url("file.bin"), source.as_uri()], tmp_path / "file.bin",
                      md5=_md5(data), progress=False)
    assert (tmp_path / "file.bin").read_bytes() == data


def test_a_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    archives = _voc_archives()
    server.files.update(archives)
    source = _voc_source(archives, server.url)
    wrong = Archive(**{**source.archives[0].__dict__, "md5": "0" * 32})
    with pytest.raises(DownloadError, match=r"VOCtrainval_06-Nov-2007.tar has MD5 [0-9a-f]{32}, "
                                            r"not the published 0{32}"):
        fetch(DatasetSource(source.name, source.folder, (wrong,)), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", [515, 1500])  # in the first file's bytes; after it
def test_an_archive_that_fails_to_unpack_leaves_no_files(server, tmp_path, cut):
    """A truncated tar (with a matching checksum, so that unpacking is reached)."""
    archives = _voc_archives()
    truncated = archives["VOCtrainval_06-Nov-2007.tar"][:cut]
    server.files["VOCtrainval_06-Nov-2007.tar"] = truncated
    shipped = DATASETS["voc2007"].archives[0]
    archive = Archive(shipped.filename, (server.url(shipped.filename),), _md5(truncated),
                      shipped.unpack_to, shipped.provides)
    with pytest.raises(DownloadError, match=r"cannot unpack .*VOCtrainval_06-Nov-2007.tar|"
                                            r"VOCtrainval_06-Nov-2007.tar has no VOCdevkit"):
        fetch(DatasetSource("VOC", "VOCdevkit", (archive,)), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCtrainval_06-Nov-2007.tar"]


def test_offline_one_line_then_archives_put_there_are_verified_and_unpacked(tmp_path, capsys):
    archives = _voc_archives()
    source = _voc_source(archives, _unreachable_url)
    root = tmp_path / "data"
    assert download.main(["voc2007", "--root", str(root), "--no-progress"],
                         sources={"voc2007": source}) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: cannot download Pascal VOC 2007")
    for archive in source.archives:
        assert archive.filename in error and archive.urls[0] in error
    assert f"in {root.resolve()}/ and run this again" in error
    for name, data in archives.items():  # the user copies the archives there
        (root / name).write_bytes(data)
    assert download.main(["voc2007", "--root", str(root), "--no-progress"],
                         sources={"voc2007": source}) == 0
    assert len(VOCDetection(root / "VOCdevkit", "trainval")) == 1
    (root / ".VOCtest_06-Nov-2007.tar.unpacked").unlink()
    (root / "VOCtest_06-Nov-2007.tar").write_bytes(b"damaged")
    assert download.main(["voc2007", "--root", str(root), "--no-progress"],
                         sources={"voc2007": source}) == 2
    assert "VOCtest_06-Nov-2007.tar has MD5" in capsys.readouterr().err


def test_the_published_checksums():
    """VOC's are torchvision's; COCO's are pinned here (images.cocodataset.org)."""
    voc = {a.filename: a for a in DATASETS["voc2007"].archives}
    for key in ("2007", "2007-test"):
        entry = torchvision.datasets.voc.DATASET_YEAR_DICT[key]
        assert voc[entry["filename"]].md5 == entry["md5"]
        assert entry["url"] in voc[entry["filename"]].urls
    coco = {a.filename: a.md5 for a in DATASETS["coco2017"].archives}
    assert coco == {"train2017.zip": "cced6f7f71b7629ddf16f17bbcfab6b2",
                    "val2017.zip": "442b8da7639aecaf257c1dceb8ba8c80",
                    "annotations_trainval2017.zip": "f4bbac642086de4f52a3fdda2de5fa2c"}
    assert all(url.startswith("http://images.cocodataset.org/")
               for a in DATASETS["coco2017"].archives for url in a.urls)
    for source in DATASETS.values():
        assert all(Path(p).parts[0] == source.folder
                   for a in source.archives for p in a.provides)
