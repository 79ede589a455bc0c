"""Output paths that never destroy data: checked before any work starts.

Every command of the project writes its results atomically, through the one writer here:
:func:`atomic_write` (and :func:`atomic_write_bytes`, :func:`atomic_write_text`,
:func:`atomic_h5` over it) writes the temporary file ``.NAME.<pid>.tmp`` beside the target,
fsyncs it, moves it into place with ``os.replace`` and removes it on any error, so a failed or
interrupted write leaves the previous file byte-identical and no temporary behind.

An atomic rename is exactly what destroys a user's file when the output path
*is* one of the command's own inputs (``vnumba.train D.h5 --out D.h5`` would replace the
dataset by the model), when two outputs of one command share a path, or when the output is a
device or a folder (the rename would replace ``/dev/full``), or a symbolic link to nothing (the
rename would replace the link, a folder could not be made there).  :func:`check_outputs`
refuses all of these with one line that names both sides, comparing resolved paths
(``os.path.samefile`` for existing files, so hard links and symlinks count) rather than
strings.  Every command calls it before any work, with every file it reads (each file found in
a folder it is given included) and every file and folder it writes.  :func:`check_distinct`
refuses the same input given twice (a file named again, or also found in a folder given).

:func:`output_folder` makes a command's output folder before its work (an unwritable place fails
first) and removes it again, while still empty, when the run fails.

:func:`remove_stale_temporaries` deletes the ``.NAME.<pid>.tmp`` files that a killed writer
left next to an output, when process ``pid`` no longer exists.  :func:`temp_path` sweeps the
folder it writes into the same way before every write (any ``NAME``), so a temporary left by a
killed run of *any* command is removed by the next command that writes there.
"""
from __future__ import annotations

import io
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

__all__ = ["OutputConflict", "same_file", "check_outputs", "check_distinct",
           "check_distinct_names", "temp_path", "remove_stale_temporaries",
           "OutputLock", "output_folder", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_h5",
           "check_h5_write", "disk_array"]


class OutputConflict(ValueError):
    """An output path that would overwrite an input, another output or a non-regular file."""


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name the same file (existing: same inode; else the
    same resolved path)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _named(label, p: Path) -> str:
    """``"LABEL PATH"``, or just ``LABEL`` when it already ends with the path."""
    label = str(label)
    return label if label == str(p) or label.endswith(f" {p}") else f"{label} {p}"


def _dangling_link(p: Path):
    """The first of ``p`` and its folders that is a symbolic link to nothing, or None."""
    for q in (p, *p.parents):
        if q.is_symlink():
            if not q.exists():
                return q
        elif q.exists():
            return None
    return None


def _check_written_path(label, p: Path, folder_output: bool) -> None:
    link = _dangling_link(p)
    if link is not None:
        what = "" if link == p else f"its folder {link} "
        raise OutputConflict(f"{_named(label, p)}: {what}is a symbolic link to "
                             f"{os.readlink(link)!r}, which does not exist; remove the link or "
                             f"choose another output path")
    if p.exists():
        if folder_output and not p.is_dir():
            raise OutputConflict(f"{_named(label, p)}: exists and is not a directory; outputs "
                                 f"are written into a folder here")
        if not folder_output and not p.is_file():
            kind = "a directory" if p.is_dir() else "not a regular file"
            raise OutputConflict(f"{_named(label, p)}: exists and is {kind}; outputs are only "
                                 f"written to regular files")
        if folder_output:
            if not os.access(p, os.W_OK | os.X_OK):
                raise OutputConflict(f"{_named(label, p)}: folder {p} is not writable")
            return
    folder = p.parent if str(p.parent) else Path(".")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputConflict(f"{_named(label, p)}: folder {folder} is not writable")
    if folder.exists() and not folder.is_dir():
        raise OutputConflict(f"{_named(label, p)}: {folder} is not a folder")


def check_outputs(inputs: Mapping[str, object], outputs: Mapping[str, object],
                  folders: Mapping[str, object] | None = None) -> None:
    """Refuse output paths that would destroy data, before any work is done.

    Parameters
    ----------
    inputs : mapping of label -> path (or None, skipped)
        What the command reads, e.g. ``{"dataset": "D.h5"}``: every file, including each
        file found in a folder the command is given.
    outputs : mapping of label -> path (or None, skipped)
        The files it writes, e.g. ``{"--out": "m.h5", "--log": "m.csv"}``.
    folders : mapping of label -> path (or None, skipped), optional
        The folders it writes into (made when missing), e.g. ``{"--out": "results"}``.

    Raises
    ------
    OutputConflict
        One line naming the output and the input (or other output) it collides with, or the
        output that exists and is not a regular file (a folder output: not a folder), or
        that is (or lies in) a symbolic link to nothing, or whose folder is not writable.
    """
    ins = {k: Path(v) for k, v in inputs.items() if v is not None}
    outs = {k: Path(v) for k, v in outputs.items() if v is not None}
    dirs = {k: Path(v) for k, v in (folders or {}).items() if v is not None}
    for k, p in dirs.items():
        _check_written_path(k, p, folder_output=True)
        for j, q in ins.items():
            if same_file(p, q):
                raise OutputConflict(f"{_named(k, p)} is the {_named(j, q)}: outputs would be "
                                     f"written in place of an input; choose another output folder")
    for k, p in outs.items():
        _check_written_path(k, p, folder_output=False)
    # One identity per path (same_file's rule: the inode of an existing file, else the
    # resolved path), so that n inputs and m outputs cost n + m look-ups, not n x m: predict
    # over a folder of 300 images writes 2400 files.
    by_id = {}
    for j, q in ins.items():
        by_id.setdefault(_identity(q), (j, q))
    for k, p in outs.items():
        hit = by_id.get(_identity(p))
        if hit is not None:
            j, q = hit
            raise OutputConflict(f"{_named(k, p)} is the same file as the {_named(j, q)}: it "
                                 f"would be overwritten; choose another output path")
    seen = {}
    for k, p in outs.items():
        key = _identity(p)
        if key in seen:
            j, q = seen[key]
            raise OutputConflict(f"{_named(j, q)} and {_named(k, p)} are the same file; give "
                                 f"each output its own path")
        seen[key] = (k, p)



@contextmanager
def output_folder(path):
    """``with output_folder(path):`` — make the output folder ``path`` (and its missing
    parents) now, so that an unwritable place fails before any work; when the body raises
    (``KeyboardInterrupt`` included), remove again the folders made here that are still empty,
    so that a failed run leaves nothing behind."""
    path = Path(path)
    made = []
    q = path
    while not q.exists() and not q.is_symlink() and q != q.parent:
        made.append(q)   # leaf first
        q = q.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for d in made:
            try:
                d.rmdir()
            except OSError:   # not empty (a file was written), or gone
                break
        raise


def _identity(p: Path):
    try:
        st = os.stat(p)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(p))


def check_distinct(paths, what: str = "input") -> None:
    """Refuse the same file given twice as an input (named twice, through a link, or also
    found in a folder given): it would be read, and counted, twice.

    Parameters
    ----------
    paths : iterable of path-like
        Every input file, those found in folders included.
    what : str
        What they are, for the message (e.g. ``"image"``).

    Raises
    ------
    ValueError
        One line naming the file (and the other name it was given under).
    """
    seen = {}
    for p in paths:
        key = _identity(Path(p))
        if key in seen:
            q = seen[key]
            also = "" if str(q) == str(p) else f" (also given as {q})"
            raise ValueError(f"{what} {p}{also} is given twice: it would be counted twice; give "
                             f"each input once")
        seen[key] = p


def check_distinct_names(paths, name, what: str = "inputs") -> None:
    """Refuse inputs whose outputs would have the same names (``a/x.png`` and ``b/x.png``).

    Parameters
    ----------
    paths : iterable of path-like
    name : callable
        The name an input's outputs are made from (e.g. ``lambda p: Path(p).stem``).
    what : str
        What they are, for the message.

    Raises
    ------
    OutputConflict
        One line naming the inputs of each clashing name.
    """
    by_name = {}
    for p in paths:
        by_name.setdefault(name(p), []).append(str(p))
    dup = {k: v for k, v in by_name.items() if len(v) > 1}
    if dup:
        raise OutputConflict(f"{what} with the same name would overwrite each other's outputs: "
                             f"{dup}")


def temp_path(path) -> Path:
    """Create and return the empty temporary file ``.NAME.<pid>.tmp`` beside ``path``.

    Named after this process so that a later run can tell a leftover of a killed writer
    (:func:`remove_stale_temporaries`); created with the permissions a plain ``open()`` gives
    (0666 less the umask), not mkstemp's 0600.
    """
    tmp = _temp_name(path)
    _create_empty(tmp)
    return tmp


def _temp_name(path) -> Path:
    """The name :func:`temp_path` uses (no file made): the folder is created, stale
    temporaries swept and this process's own leftover of that name removed."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder / "*")  # leftovers of killed writers of any file here
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        tmp.unlink()  # this process's own leftover of an earlier failed write
    except FileNotFoundError:
        pass
    return tmp


def _create_empty(tmp) -> None:
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def _fsync(path, directory=False) -> None:
    """Flush ``path`` (a file, or best effort a folder) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a folder; the rename still holds
            raise
    finally:
        os.close(fd)


def atomic_write(path, write_fn):
    """Write ``path`` atomically: ``write_fn(tmp)`` fills the temporary file, then it replaces
    ``path``.

    ``tmp`` is :func:`temp_path` ``(path)`` (``.NAME.<pid>.tmp`` in the same folder, created
    empty, 0666 less the umask).  After ``write_fn`` returns, the file is fsynced and moved onto
    ``path`` with ``os.replace`` (the folder is fsynced too, best effort).  On any error —
    including ``KeyboardInterrupt`` — the temporary file is removed and the previous ``path``,
    if any, is left untouched.

    Parameters
    ----------
    path : str or path-like
    write_fn : callable(Path) -> object
        Writes the complete content to the path it is given (it may reopen or truncate it).

    Returns
    -------
    object
        What ``write_fn`` returned.
    """
    path = Path(path)
    # The file is made inside the try: a signal (Ctrl-C, SIGTERM as KeyboardInterrupt) that
    # lands right after it exists must still remove it (seen in CI: SIGTERM during
    # vnumba.predict left a .NAME.<pid>.tmp when the file had been made before the try).
    tmp = _temp_name(path)
    try:
        _create_empty(tmp)
        result = write_fn(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync(tmp.parent, directory=True)
    return result


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path, text: str, newline=None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`).

    ``newline`` is passed to :func:`open` (``""`` writes line endings untranslated, as the
    :mod:`csv` module wants).
    """
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
    atomic_write(path, write)


class _GuardedFile(io.RawIOBase):
    """The file object HDF5 writes through (h5py's file-object driver) for :func:`atomic_h5`.

    HDF5 does not survive a failed write: after ``ENOSPC`` its close fails, h5py's object ids
    can no longer be released, and the process ends in a segmentation fault (a full
    disk during ``train`` and ``synth generate``).  So a write that fails here is *not*
    reported to HDF5: the error is kept, the bytes are held in memory (later reads see them),
    and HDF5 finishes and closes cleanly; :func:`atomic_h5` then raises the kept error and the
    temporary file is removed.  Writers of many samples call :func:`check_h5_write` between
    samples so that memory holds at most one sample after the disk filled up.
    """

    def __init__(self, path):
        super().__init__()
        self._fh = open(path, "r+b", buffering=1 << 20)
        self._pos = 0
        self._held = []          # (offset, bytes) written after the first failure, in order
        self.error = None        # the first OSError of a write

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self._size() + offset
        return self._pos

    def tell(self):
        return self._pos

    def _size(self):
        end = os.fstat(self._fh.fileno()).st_size
        for off, b in self._held:
            end = max(end, off + len(b))
        return end

    def readinto(self, buf):
        mv = memoryview(buf).cast("B")
        self._fh.seek(self._pos)
        n = self._fh.readinto(mv)
        n = n or 0
        end = self._pos + len(mv)
        for off, b in self._held:  # bytes that never reached the disk, newest last
            lo, hi = max(off, self._pos), min(off + len(b), end)
            if lo < hi:
                mv[lo - self._pos:hi - self._pos] = b[lo - off:hi - off]
                n = max(n, hi - self._pos)
        self._pos += n
        return n

    def write(self, data):
        data = bytes(data)
        if self.error is None:
            try:
                if self._fh.tell() != self._pos:
                    self._fh.seek(self._pos)
                self._fh.write(data)  # buffered: a full disk shows here or at close
            except OSError as e:
                self.error = e
        if self.error is not None:
            self._held.append((self._pos, data))
        self._pos += len(data)
        return len(data)

    def truncate(self, size=None):
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._fh.truncate(size)
            except OSError as e:
                self.error = e
        return size

    def flush(self):
        pass

    def close(self):
        if not self.closed:
            try:
                self._fh.close()
            except OSError as e:
                self.error = self.error or e
        super().close()


_GUARDS = {}


class DiskArray:
    """A C-ordered array in a file, read and written with ``pread`` / ``pwrite``.

    Not a memory map on purpose: the pages of a mapped file that a process has written or
    read count in its resident set until they are unmapped, so a slide's probability map
    (hundreds of MB at 16384², GB for a real slide) made the process's peak RSS grow with the
    slide (bench/README.md, issue 21).  Read and written here, the data goes through the page
    cache, which the kernel reclaims, and the process holds only the pieces in use.

    Indexing: ``a[i, j, k]`` with integers or step-1 slices on every axis (fewer keys: the
    rest whole), reading an ndarray (integer axes dropped) or writing an array broadcast to
    the selection.  Rows that span the whole width are read or written in one call.
    """

    def __init__(self, path, dtype, shape, writable=True):
        import numpy as np

        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(v) for v in shape)
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _ranges(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > self.ndim:
            raise IndexError(f"{len(key)} indices for a {self.ndim}-d array")
        key = key + (slice(None),) * (self.ndim - len(key))
        out = []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                a, b, st = k.indices(n)
                if st != 1:
                    raise IndexError("DiskArray takes step-1 slices only")
                out.append((a, max(a, b), False))
            else:
                i = int(k)
                i = i + n if i < 0 else i
                if not 0 <= i < n:
                    raise IndexError(f"index {k} out of range for an axis of {n}")
                out.append((i, i + 1, True))
        return out

    def _runs(self, rng):
        """``(length, offsets)``: the selection as runs of contiguous elements, each
        ``length`` elements long, starting at the byte offsets yielded, in C order."""
        import itertools

        n = self.ndim
        strides = [1] * n
        for d in range(n - 2, -1, -1):
            strides[d] = strides[d + 1] * self.shape[d + 1]
        # the trailing axes taken whole merge with the one before them into one run
        m = n - 1
        while m > 0 and rng[m][0] == 0 and rng[m][1] == self.shape[m]:
            m -= 1
        length = (rng[m][1] - rng[m][0]) * strides[m]
        item = self.dtype.itemsize

        def offsets():
            for idx in itertools.product(*[range(a, b) for a, b, _ in rng[:m]]):
                yield (sum(i * st for i, st in zip(idx, strides)) + rng[m][0] * strides[m]) * item
        return length, offsets()

    def __getitem__(self, key):
        import numpy as np

        rng = self._ranges(key)
        shape = tuple(b - a for a, b, _ in rng)
        out = np.empty(shape, self.dtype)
        if out.size:
            length, offs = self._runs(rng)
            flat = out.reshape(-1)
            for n, off in enumerate(offs):
                buf = _pread_all(self._fd, length * self.dtype.itemsize, off, self.path)
                flat[n * length:(n + 1) * length] = np.frombuffer(buf, self.dtype)
        return out[tuple(0 if d else slice(None) for _, _, d in rng)]

    def __setitem__(self, key, value):
        import numpy as np

        rng = self._ranges(key)
        shape = tuple(b - a for a, b, _ in rng)
        kept = tuple(b - a for a, b, d in rng if not d)   # the selection's NumPy shape
        val = np.ascontiguousarray(np.broadcast_to(np.asarray(value, self.dtype), kept))
        val = val.reshape(shape)
        if not val.size:
            return
        length, offs = self._runs(rng)
        flat = memoryview(val.reshape(-1)).cast("B")
        nb = length * self.dtype.itemsize
        for n, off in enumerate(offs):
            _pwrite_all(self._fd, flat[n * nb:(n + 1) * nb], off, self.path)

    def flush(self) -> None:
        """Nothing is buffered here (each write is a ``pwrite``); kept for the memmap API."""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:   # noqa: BLE001 - interpreter shutdown
            pass


def _pread_all(fd, n, off, path):
    parts, got = [], 0
    while got < n:
        b = os.pread(fd, n - got, off + got)
        if not b:
            raise OSError(f"{path}: file ends at byte {off + got}, expected {off + n}")
        parts.append(b)
        got += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pwrite_all(fd, mv, off, path):
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], off + done)


def disk_array(path, dtype, shape, mode="w+"):
    """A disk-backed array (:class:`DiskArray`) whose blocks are reserved on disk when it is
    made (``posix_fallocate``).

    With the space reserved up front, a full disk is an ``OSError`` naming the file here,
    before any work (a sparse file would fail on a later write, and a memory map of one ends
    the process with SIGBUS).  ``mode`` ``"r+"`` opens an existing one (its blocks were
    reserved when it was made), ``"r"`` read-only.  File systems without ``fallocate`` fall
    back to the sparse file.
    """
    import errno

    import numpy as np

    path = Path(path)
    if mode in ("r+", "r"):
        return DiskArray(path, dtype, shape, writable=mode == "r+")
    nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        if nbytes:
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.close(fd)
            path.unlink(missing_ok=True)
            raise OSError(e.errno, f"{path}: cannot reserve {nbytes / 2 ** 20:.0f} MiB on disk: "
                                   f"{e.strerror}") from None
        os.ftruncate(fd, nbytes)   # no fallocate: a sparse file of the full size
    os.close(fd)
    return DiskArray(path, dtype, shape)


def check_h5_write(f) -> None:
    """Raise the first write error of the HDF5 file ``f`` that :func:`atomic_h5` is writing
    (e.g. ``ENOSPC``) now, rather than when it is closed; nothing for other files."""
    entry = _GUARDS.get(id(f))
    if entry is not None and entry[0].error is not None:
        raise _write_error(entry[1], entry[0].error)


def _write_error(path, e) -> OSError:
    import errno
    return OSError(e.errno or errno.EIO, f"{path}: cannot be written: {e.strerror or e} "
                                         f"(nothing was replaced)")


def atomic_h5(path, write):
    """Call ``write(h5file)`` on a new HDF5 file, then move it onto ``path`` atomically
    (:func:`atomic_write`).  Returns what ``write`` returned.

    A write error (a full disk) raises ``OSError`` naming ``path`` after HDF5 has closed the
    file cleanly (:class:`_GuardedFile`); the temporary file is removed and the previous
    ``path`` stays as it was.
    """
    import h5py

    def fill(tmp):
        guard = _GuardedFile(tmp)
        try:
            with h5py.File(guard, "w") as f:
                _GUARDS[id(f)] = (guard, path)
                try:
                    result = write(f)
                finally:
                    _GUARDS.pop(id(f), None)
        finally:
            guard.close()
        if guard.error is not None:
            raise _write_error(path, guard.error)
        return result
    return atomic_write(path, fill)


_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path) -> list:
    """Delete ``.NAME.<pid>.tmp`` beside ``path`` (NAME its file name) whose process is gone.

    ``path``'s name ``*`` sweeps every ``.NAME.<pid>.tmp`` of its folder (any ``NAME``).

    Returns
    -------
    list of Path
        The files removed.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    removed = []
    if not folder.is_dir():
        return removed
    every = path.name == "*"
    for q in folder.glob(f".{path.name}.*.tmp"):
        m = _TMP.match(q.name)
        if m and (every or m.group("name") == path.name) and int(m.group("pid")) != os.getpid() \
                and q.is_file() and not q.is_symlink() and not _alive(int(m.group("pid"))):
            try:
                q.unlink()
                removed.append(q)
            except FileNotFoundError:
                pass
    return removed


class OutputLock:
    """``with OutputLock(path):`` — one writer at a time for ``path``.

    Creates ``path`` + ``.lock`` holding this process's pid (exclusively); a second process
    gets :class:`OutputConflict` naming the holder.  A lock whose process is gone (killed) is
    stale and taken over.  The lock file is removed on exit.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")
        self._held = False

    def __enter__(self):
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    pid = int(self.lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise OutputConflict(f"{self.path}: another process (pid {pid}) is writing "
                                         f"it (lock {self.lock}); wait for it or choose another "
                                         f"output") from None
                self.lock.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self._held = True
            return self
        raise OutputConflict(f"{self.path}: cannot take the lock {self.lock}")

    def __exit__(self, *exc):
        if self._held:
            self.lock.unlink(missing_ok=True)
            self._held = False
        return False
