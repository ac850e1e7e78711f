"""files.py: the one atomic writer. A failed write leaves the previous file and no temp file; errors name the target."""
import errno
import hashlib
import os

import numpy as np
import pytest
import torch

from fairseq_xmodal import files


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    files.atomic_write_json({"a": 1}, str(target))
    assert target.read_text() == '{\n  "a": 1\n}\n'

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    with pytest.raises(OSError) as e:
        files.atomic_write_with(broken, str(target))
    assert e.value.filename == str(target) and e.value.errno == errno.ENOSPC
    assert target.read_text() == '{\n  "a": 1\n}\n' and sorted(os.listdir(tmp_path)) == ["out.json"]


def test_every_kind_of_write_lands_whole(tmp_path):
    files.atomic_write_text("x\n", str(tmp_path / "a.txt"))
    files.atomic_copy(str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    files.atomic_torch_save({"w": torch.arange(3)}, str(tmp_path / "c.pt"))

    def npz(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, rows=np.arange(4))

    files.atomic_write_with(npz, str(tmp_path / "d.npz"))
    assert (tmp_path / "b.txt").read_text() == "x\n"
    assert torch.equal(torch.load(str(tmp_path / "c.pt"))["w"], torch.arange(3))
    with np.load(str(tmp_path / "d.npz")) as z:
        assert z["rows"].tolist() == [0, 1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "c.pt", "d.npz"]
    assert files.sha256(str(tmp_path / "a.txt")) == hashlib.sha256(b"x\n").hexdigest()
