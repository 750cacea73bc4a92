"""Crashes and full disks, repeatable (issue 11): kill -9 at random moments while a run saves
a checkpoint at every evaluation, and a disk that fills up during a save.  After each, the
last checkpoint loads, a resumed run continues, and no file the user had is gone."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from npgpt import checkpoint
from npgpt.cli import main
from training_helpers import TINY, write_corpus

# Saves as often as possible: an evaluation (and a save when val improves) every iteration.
SAVE_OFTEN = [*TINY, "--eval-interval", "1", "--eval-iters", "1", "--lr", "3e-3"]


def _files(directory):
    return {os.path.relpath(os.path.join(r, n), directory) for r, ds, ns in os.walk(directory) for n in ds + ns}


def _wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_kill_minus_9_during_saves_never_loses_the_checkpoint(tmp_path):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / "ckpt-0000042").mkdir()  # shaped like a snapshot, but the user's
    rng = random.Random(11)
    last_iter = 0
    for round_ in range(3):
        resume = ["--resume", str(out)] if round_ else ["--out", str(out)]
        proc = subprocess.Popen([sys.executable, "-m", "npgpt.cli", "train", *SAVE_OFTEN, "--data", data, *resume,
                                 "--max-iters", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def saved_past_last():
                p = out / "checkpoint.json"
                return p.exists() and json.loads(p.read_text() or "{}").get("iter", 0) > last_iter
            assert _wait_for(saved_past_last, 120), proc.stderr.read1().decode() if proc.poll() is not None else ""
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the middle of the next saves
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        ckpt = checkpoint.load(str(out))  # loads: every file matches its hash
        assert ckpt.iteration > last_iter
        last_iter = ckpt.iteration
        assert {"notes.txt", "ckpt-0000042"} <= _files(out)
    # the lock of the killed run does not block, and the run continues exactly from the checkpoint
    assert main(["train", *SAVE_OFTEN, "--data", data, "--resume", str(out), "--max-iters", str(last_iter + 2)]) == 0
    assert checkpoint.load(str(out)).iteration == last_iter + 2


def _trained(tmp_path, out):
    data = write_corpus(tmp_path)
    assert main(["train", *TINY, "--data", data, "--out", str(out), "--max-iters", "5"]) == 0
    return data


def _assert_full_disk_run_fails_cleanly(capsys, out, data):
    pointer_before = (out / "checkpoint.json").read_bytes()
    files_before = _files(out)
    capsys.readouterr()
    status = main(["train", *TINY, "--data", data, "--resume", str(out), "--max-iters", "10"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("npgpt: error: "), err
    assert "cannot save a checkpoint in" in lines[0] and "No space left on device; the previous checkpoint is unharmed" in lines[0]
    assert ".saving-" not in err and ".tmp-" not in err and "Traceback" not in err  # no temporary names
    assert (out / "checkpoint.json").read_bytes() == pointer_before  # the old checkpoint is still current
    assert checkpoint.load(str(out)).iteration == 5
    assert files_before <= _files(out)
    assert not [n for n in os.listdir(out) if n.startswith(".saving-") or n.startswith(".tmp-")]  # no debris


def _can_mount_tmpfs(where):
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_full_disk_keeps_the_old_checkpoint_on_a_real_tmpfs(tmp_path, capsys):
    """A 2 MB tmpfs, filled up after the first run: the resumed run's save hits ENOSPC for real."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root and permission to mount a tmpfs (the injected test below covers ENOSPC)")
    try:
        out = disk / "out"
        data = _trained(tmp_path, out)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte
        try:
            for size in (65536, 4096, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC
                        break
        finally:
            os.close(fd)
        _assert_full_disk_run_fails_cleanly(capsys, out, data)
        filler.unlink()
        assert main(["train", *TINY, "--data", data, "--resume", str(out), "--max-iters", "10"]) == 0
        assert checkpoint.load(str(out)).iteration == 10
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("fail_at", ["model.safetensors", "state.json", "pointer"])
def test_a_full_disk_keeps_the_old_checkpoint_injected(tmp_path, capsys, monkeypatch, fail_at):
    """ENOSPC injected in-process, after part of the file is written, at each stage of a save."""
    from npgpt import fileio

    out = tmp_path / "out"
    data = _trained(tmp_path, out)
    real_write_file, real_atomic = checkpoint._write_file, checkpoint.atomic_write_bytes

    def full(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def write_file(directory, name, data_, hashes):
        if name == fail_at:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data_[: len(data_) // 2])  # half of it made it to disk
            raise full(os.path.join(directory, name))
        return real_write_file(directory, name, data_, hashes)

    def atomic(path, data_):
        if fail_at == "pointer" and str(path).endswith("checkpoint.json"):
            raise full(path)
        return real_atomic(path, data_)

    monkeypatch.setattr(checkpoint, "_write_file", write_file)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", atomic)
    assert fileio.atomic_write_bytes is real_atomic  # only the checkpoint's commit is made to fail
    _assert_full_disk_run_fails_cleanly(capsys, out, data)
    monkeypatch.undo()
    assert main(["train", *TINY, "--data", data, "--resume", str(out), "--max-iters", "10"]) == 0
    assert checkpoint.load(str(out)).iteration == 10
