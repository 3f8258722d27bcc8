"""One-line messages for failed writes (issue 12, item 10): disk full, permission denied, read-only, others."""

import errno
import os
from pathlib import Path

import pytest

from featvis.errors import display_path, os_error_message


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_real_disk_full_error():
    with pytest.raises(OSError) as e, open("/dev/full", "wb") as f:  # the flush is what fails
        f.write(b"x" * 10)
        f.flush()
    assert e.value.errno == errno.ENOSPC
    assert os_error_message(e.value, "out/run/manifest.json") == (
        "disk full while writing 'out/run/manifest.json'; free space and rerun to resume")


@pytest.mark.parametrize("code,expected", [
    (errno.ENOSPC, "disk full while writing 'o/a.png'; free space and rerun to resume"),
    (errno.EDQUOT, "disk full while writing 'o/a.png' (quota exceeded); free space and rerun to resume"),
    (errno.EACCES, "cannot write 'o/a.png': permission denied; choose another output folder or fix its permissions"),
    (errno.EPERM, "cannot write 'o/a.png': permission denied; choose another output folder or fix its permissions"),
    (errno.EROFS, "cannot write 'o/a.png': the file system is read-only; choose another output folder"),
    (errno.ENAMETOOLONG, "cannot write 'o/a.png': File name too long"),
])
def test_os_error_messages(code, expected):
    assert os_error_message(_error(code, "o/a.png"), "o/a.png") == expected


def test_message_is_one_printable_line():
    odd = os.fsdecode(b"out/bad\xff\nname.png")
    message = os_error_message(OSError("first line\nsecond line"), odd)
    assert message == "cannot write 'out/bad\\xff\\nname.png': first line"
    message.encode("utf-8")
    assert display_path(odd) == "out/bad\\xff\\nname.png"
