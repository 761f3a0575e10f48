"""Writing a run's files: a folder checked before the run starts, every file written whole or not at all, and a
write that fails (a full disk, a read-only folder) named in one line.

``check_writable(folder, key)``: the folder exists (or is made) and a file can be written into it, else ``NotWritable``
naming the folder and the key that chose it; train.py checks the run folder with it before anything is built.
``replaced(target)``: a temporary path beside ``target`` (a file or a folder) that becomes ``target`` when the block
ends; when the block fails the temporary is removed, so neither a ``*.tmp`` nor half a file is left, and an
``OSError`` of the disk becomes ``NotWritable`` naming ``target``. Checkpoints (``AtomicCheckpointIO``), results.json,
config.yaml, the tokenizer, the leaderboard file and the teachers' caches are written through it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from datamodules.errors import NotWritable

# What a disk answers when it is full or the folder is not ours to write: the user's to fix, not a bug.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
TMP_SUFFIX = ".tmp"


# Rust libraries (tokenizers' save_pretrained writes tokenizer.json) raise a plain Exception ending like this.
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def disk_errno(err: BaseException) -> int | None:
    """The errno of an error from the disk: an OSError's, or the one a Rust library's message names."""
    if isinstance(err, OSError):
        return err.errno
    found = RUST_OS_ERROR.search(str(err)) if isinstance(err, Exception) else None
    return int(found.group(1)) if found else None


def disk_error(err: BaseException) -> bool:
    return disk_errno(err) in DISK_ERRNOS


def reason(err: BaseException, key: str = "hydra.run.dir") -> str:
    """What the disk said, and what to do about it: free space, or write elsewhere (``key``)."""
    number = disk_errno(err)
    said = os.strerror(number) if number is not None else str(err)
    if number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{said}; free space there or give another {key}"
    return f"{said}; give a folder this user can write ({key})"


def check_writable(folder: str | Path, key: str, make: bool = True) -> None:
    """A file can be created, written and removed in ``folder`` (made first; ``make=False``: probed in its nearest
    existing ancestor, for a folder that someone else makes)."""
    folder = Path(folder)
    probed = folder
    try:
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            while not probed.exists() and probed != probed.parent:
                probed = probed.parent
        with tempfile.NamedTemporaryFile(dir=probed, prefix=".writable-", suffix=TMP_SUFFIX) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:  # whatever the reason, the run could not write there
        raise NotWritable(f"{folder} cannot be written: {reason(err, key)}") from None


@contextmanager
def replaced(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` that is renamed onto it when the block succeeds (a folder replaces the one
    there); removed when it fails, a disk's OSError becoming ``NotWritable`` naming ``target``."""
    target = Path(target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}{TMP_SUFFIX}")  # one per process: ranks may write at once
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as err:
        remove(tmp)
        if disk_error(err):
            raise NotWritable(f"cannot write {target}: {reason(err)}") from None
        raise


def remove(path: Path) -> None:
    """``path`` (a file or a folder) gone, whatever is left of it; quietly, as a cleanup after another error."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass
