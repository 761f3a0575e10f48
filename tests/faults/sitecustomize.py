"""A disk that refuses writes, for the tests of a child process (put this folder first on its PYTHONPATH).

``FAULT_DIR``: writes under this folder fail. Without ``FAULT_NAME`` the folder is read-only: creating, opening for
writing, renaming into or removing anything under it fails with EROFS. With ``FAULT_NAME`` (a glob of file names) the
disk fills up: a matching file opens, takes ``FAULT_AFTER`` bytes (0 by default), and the next write fails with ENOSPC,
as a full disk answers (without a file name: the program has to name the file itself).
"""

import builtins
import errno
import fnmatch
import os

FOLDER = os.environ.get("FAULT_DIR")
NAME = os.environ.get("FAULT_NAME")
AFTER = int(os.environ.get("FAULT_AFTER", "0"))


def _under(path) -> bool:
    if isinstance(path, int):
        return False
    try:
        full = os.path.abspath(os.fsdecode(os.fspath(path)))
    except TypeError:
        return False
    return full == FOLDER or full.startswith(FOLDER + os.sep)


def _read_only(path):
    return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(os.fspath(path)))


class _Filling:
    """A file on a disk with ``AFTER`` bytes left."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self._left = AFTER

    def write(self, data):
        if len(data) > self._left:
            if self._left:
                self._handle.write(data[: self._left])
                self._handle.flush()
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


if FOLDER:
    FOLDER = os.path.abspath(FOLDER)
    _open, _os_open = builtins.open, os.open
    _mkdir, _replace, _rename, _unlink, _rmdir = os.mkdir, os.replace, os.rename, os.unlink, os.rmdir
    WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _writes(mode) -> bool:
        return any(flag in str(mode) for flag in "wax+")

    def open(file, mode="r", *args, **kwargs):  # noqa: A001 - builtins.open's stand-in
        if _writes(mode) and _under(file):
            if NAME is None:
                raise _read_only(file)
            if fnmatch.fnmatch(os.path.basename(os.fspath(file)), NAME):
                return _Filling(_open(file, mode, *args, **kwargs))
        return _open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if NAME is None and flags & WRITING and _under(path):
            raise _read_only(path)
        return _os_open(path, flags, *args, **kwargs)

    def _guard(function, *positions):
        def guarded(*args, **kwargs):
            if NAME is None and any(_under(args[i]) for i in positions if i < len(args)):
                raise _read_only(args[positions[-1]] if positions[-1] < len(args) else args[0])
            return function(*args, **kwargs)
        return guarded

    builtins.open = open
    import io

    io.open = open
    os.open = os_open
    os.mkdir = _guard(_mkdir, 0)
    os.replace = _guard(_replace, 0, 1)
    os.rename = _guard(_rename, 0, 1)
    os.unlink = os.remove = _guard(_unlink, 0)
    os.rmdir = _guard(_rmdir, 0)
