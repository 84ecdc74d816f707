"""Special files in sources are refused at once, never read: FIFOs (which would block forever),
sockets, device files, unreadable files, and symlinks that leave the source folder. Hidden entries
are ignored; links that stay inside the folder are fine (tasks/sources/files.py)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import DatasetError
from tasks.ingest import ingest
from tasks.sources import load_source

REPO = Path(__file__).resolve().parents[2]


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def _ingest_in_subprocess(
    source: Path, root: Path, timeout: float = 120
) -> subprocess.CompletedProcess:
    """A reader that blocked on a FIFO would hang: the subprocess's timeout turns that into a
    failure instead of a stuck test run."""
    code = (
        "import sys; from tasks.ingest import ingest\n"
        "from models.errors import DatasetError\n"
        f"try: ingest({str(source)!r}, 'x', {str(root)!r})\n"
        "except DatasetError as e: print(e); sys.exit(2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=timeout,
                          capture_output=True, text=True)  # fmt: skip


@pytest.mark.parametrize("where", ["images", "parquet", "csv-file"])
def test_a_fifo_is_refused_without_blocking(tmp_path, where):
    if where == "images":
        source = _images(tmp_path / "img")
        os.mkfifo(source / "waiting.png")
    elif where == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        source = tmp_path / "pq"
        source.mkdir()
        pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), source / "part-0.parquet")
        os.mkfifo(source / "part-1.parquet")
    else:
        source = tmp_path / "stream.csv"
        os.mkfifo(source)
    proc = _ingest_in_subprocess(source, tmp_path / "root")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is a FIFO (named pipe), not a regular file" in proc.stdout
    assert not (tmp_path / "root").exists()


def test_a_socket_and_a_device_in_a_folder_are_refused(tmp_path):
    folder = _images(tmp_path / "img")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(folder / "control.sock"))
    with pytest.raises(DatasetError, match=r"'control.sock' in source folder .* is a socket"):
        ingest(str(folder), "x", str(tmp_path / "root"))
    os.remove(folder / "control.sock")
    try:
        os.mknod(folder / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
    except PermissionError:
        pytest.skip("this system does not let the tests create a device file")
    with pytest.raises(DatasetError, match=r"'zero.png' in source folder .* is a character device"):
        ingest(str(folder), "x", str(tmp_path / "root"))
    with pytest.raises(DatasetError, match=r"'/dev/zero' is a character device"):
        load_source("/dev/zero", format="csv")
    assert not (tmp_path / "root").exists()


def test_symlinks_leaving_the_folder_are_refused_and_inside_ones_are_fine(tmp_path):
    outside = _images(tmp_path / "elsewhere", 1)
    folder = _images(tmp_path / "img")
    (folder / "stolen.png").symlink_to(outside / "0.png")
    with pytest.raises(
        DatasetError, match=r"'stolen.png' is a symlink to .*elsewhere/0.png.*outside"
    ):
        ingest(str(folder), "x", str(tmp_path / "root"))
    os.remove(folder / "stolen.png")
    (folder / "more").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match=r"'more' is a symlink to .*outside the folder"):
        ingest(str(folder), "x", str(tmp_path / "root"))
    os.remove(folder / "more")
    (folder / "again.png").symlink_to(folder / "1.png")  # stays inside: an ordinary file
    (folder / "sub").mkdir()
    (folder / "loop").symlink_to(folder / "sub", target_is_directory=True)  # not followed
    data = load_source(str(folder))
    assert sorted(data.ids) == ["0.png", "1.png", "2.png", "again.png"]
    np.testing.assert_array_equal(data.x[3], data.x[1])


def test_hidden_special_files_are_ignored(tmp_path):
    folder = _images(tmp_path / "img")
    os.mkfifo(folder / ".lock")
    (folder / ".cache").mkdir()
    os.mkfifo(folder / ".cache" / "pipe.png")
    assert len(load_source(str(folder)).ids) == 3


def test_an_unreadable_file_is_refused(tmp_path):
    folder = _images(tmp_path / "img")
    os.chmod(folder / "1.png", 0)
    code = (
        "import sys; from tasks.sources import load_source\n"
        "from models.errors import DatasetError\n"
        f"try: load_source({str(folder)!r})\n"
        "except DatasetError as e: print(e); sys.exit(2)\n"
    )
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root reads anything: run without the capabilities that allow it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv to drop the read capability")
        drop = "-dac_override,-dac_read_search"
        argv = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'1.png' in source folder" in proc.stdout and "permission denied" in proc.stdout


def test_a_labels_file_that_is_a_fifo_is_refused(tmp_path):
    from tasks.sources.idx import write_idx

    write_idx(str(tmp_path / "imgs.idx"), np.zeros((3, 2, 2), np.uint8))
    os.mkfifo(tmp_path / "labels.idx")
    with pytest.raises(DatasetError, match=r"labels.idx' is a FIFO"):
        load_source(str(tmp_path / "imgs.idx"), labels_file=str(tmp_path / "labels.idx"))
