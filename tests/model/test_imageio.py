"""model/imageio.py: only regular files are opened, and never read past the limit."""

from __future__ import annotations

import os
import threading

import pytest
from testkit import image_bytes

from model.errors import ImageError
from model.imageio import open_image, open_regular_file, read_image_file


def _reason(fn, *args) -> str:
    with pytest.raises(ImageError) as err:
        fn(*args)
    return err.value.reason


def test_read_image_file_reads_a_regular_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes())
    assert read_image_file(path, 1 << 20) == path.read_bytes()
    assert open_image(str(path)).size == (48, 64)


def test_a_fifo_is_not_a_file_and_never_blocks(tmp_path):
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    reasons: list[str] = []
    for fn in (lambda: read_image_file(fifo, 100), lambda: open_image(str(fifo))):
        t = threading.Thread(target=lambda fn=fn: reasons.append(_reason(fn)), daemon=True)
        t.start()
        t.join(10)
    assert reasons == ["not_a_file", "not_a_file"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_is_not_a_file(tmp_path):
    link = tmp_path / "z.png"
    link.symlink_to("/dev/zero")
    assert _reason(read_image_file, link, 100) == "not_a_file"
    assert _reason(open_image, str(link)) == "not_a_file"


def test_directories_missing_empty_and_oversized_files(tmp_path):
    assert _reason(open_regular_file, tmp_path) == "not_a_file"
    assert _reason(read_image_file, tmp_path / "nope", 100) == "missing"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(open_image, str(tmp_path / "empty.png")) == "empty"
    (tmp_path / "big.png").write_bytes(b"x" * 101)
    assert _reason(read_image_file, tmp_path / "big.png", 100) == "too_large"
    assert read_image_file(tmp_path / "big.png", 101) == b"x" * 101
