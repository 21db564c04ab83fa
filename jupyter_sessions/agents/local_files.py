"""File operations inside a session's work directory, contained component by component.

This module is the one implementation of the file actions (list, stat, read, archive, upload,
mkdir, delete, move, usage) for both agents. It uses the standard library only, because it runs
in two places: in the server's threads for the local agent (the work directory is on the host), and
verbatim inside a session container (``python3 -I -c <this source> <op> <json>``, as the kernel's
user, see ``docker_files.py``), so that the container's own view decides where a path leads.

Containment: a request path is normalised lexically (NUL, over-long names and ``..`` that leaves the
root are refused), then walked from an open descriptor of the root one component at a time with
``O_NOFOLLOW``. A symlink met on the way is read and resolved lexically against the root, and the
walk starts again from the root with the result: a link leading outside is refused, and a link
swapped in between two steps makes the next ``O_NOFOLLOW`` open fail instead of escaping.
Errors are ``FileOpError(kind, message)``; ``to_error`` maps them to the server's error tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import fcntl
import io
import json
import os
import queue
import shutil
import stat
import struct
import sys
import tarfile
import threading
import zipfile
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any, BinaryIO

#: How request paths name the work directory (on every agent).
WORK_ROOT = "/home/work"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_SYMLINK_HOPS = 40
CHUNK = 1 << 20
#: Prefix of the temporary files an upload writes before it commits (hidden, in the target dir).
TEMP_PREFIX = ".jsess-upload-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FileOpError(Exception):
    """A refused or failed file operation: ``kind`` is invalid, not-found, conflict or failed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def to_error(kind: str, message: str) -> Exception:
    """The server's error for a helper's ``kind`` (a lazy import: the container has no package)."""
    from ..errors import AgentError, Conflict, InvalidRequest, NotFound, PermissionDenied, TooLarge

    classes: dict[str, type[Exception]] = {
        "invalid": InvalidRequest,
        "not-found": NotFound,
        "conflict": Conflict,
        "too-large": TooLarge,
        "denied": PermissionDenied,
    }
    return classes.get(kind, AgentError)(message)


# --- paths ---------------------------------------------------------------------------------------


def split_path(path: str, *, base: list[str] | None = None) -> list[str]:
    """A request path as components under the work root (``/home/work/...`` or relative to it,
    or to ``base``); refuses what can never be inside."""
    if not isinstance(path, str):
        raise FileOpError("invalid", "a path must be a string")
    if "\x00" in path:
        raise FileOpError("invalid", "a path must not contain NUL bytes")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise FileOpError("invalid", f"a path must be at most {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        if path != WORK_ROOT and not path.startswith(WORK_ROOT + "/"):
            raise FileOpError("invalid", f"absolute paths must be inside {WORK_ROOT}")
        parts: list[str] = []
        path = path[len(WORK_ROOT) :]
    else:
        parts = list(base or [])
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise FileOpError("invalid", f"the path leaves {WORK_ROOT}")
            parts.pop()
            continue
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise FileOpError("invalid", f"a file name must be at most {MAX_NAME_BYTES} bytes")
        parts.append(name)
    return parts


def show(parts: list[str]) -> str:
    """How answers name a path: absolute, under ``/home/work``."""
    return "/".join([WORK_ROOT, *parts])


def _link_parts(target: str, where: list[str], root_path: str) -> list[str]:
    """Where a symlink found in ``where`` leads, as components under the root; outside → invalid."""
    if target.startswith("/"):
        root = root_path.rstrip("/")
        if target != root and not target.startswith(root + "/"):
            raise FileOpError("invalid", "a symlink on the path leads outside the work directory")
        target, where = target[len(root) :], []
    parts = list(where)
    for name in target.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise FileOpError(
                    "invalid", "a symlink on the path leads outside the work directory"
                )
            parts.pop()
            continue
        parts.append(name)
    return parts


class Root:
    """An open work directory: every operation walks from its descriptor."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)
        self.fd = os.open(self.path, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def walk(
        self,
        parts: list[str],
        *,
        follow_last: bool = True,
        create: list[list[str]] | None = None,
    ) -> tuple[int, list[str], str | None]:
        """Open the parent directory of ``parts``: (its fd, the resolved path, the last name).

        The last name is None for the root itself. Symlinks are resolved inside the root (the last
        one only with ``follow_last``); ``create`` makes missing directories and records them.
        The caller closes the fd.
        """
        pending, done = list(parts), list[str]()
        fd = os.dup(self.fd)
        hops = 0
        try:
            while pending:
                name = pending.pop(0)
                last = not pending
                if last and not follow_last:
                    return fd, done, name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        return fd, done, name
                    if create is None:
                        raise FileOpError(
                            "not-found", f"{show([*done, name])} does not exist"
                        ) from None
                    os.mkdir(name, 0o755, dir_fd=fd)
                    create.append([*done, name])
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise FileOpError("invalid", "too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    pending = _link_parts(target, done, self.path) + pending
                    os.close(fd)
                    fd, done = os.dup(self.fd), []
                    continue
                if last:
                    return fd, done, name
                if not stat.S_ISDIR(st.st_mode):
                    raise FileOpError("invalid", f"{show([*done, name])} is not a directory")
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:  # swapped for a symlink or a file since the stat
                    raise FileOpError("invalid", f"{show([*done, name])}: {exc.strerror}") from None
                os.close(fd)
                fd = child
                done.append(name)
            return fd, done, None
        except BaseException:
            os.close(fd)
            raise

    def open_dir(self, parts: list[str]) -> tuple[int, list[str]]:
        """A directory's own fd (symlinks followed inside the root) and its resolved path."""
        fd, done, name = self.walk(parts)
        if name is None:
            return fd, done
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise FileOpError("not-found", f"{show(parts)} does not exist") from None
        except OSError as exc:
            raise FileOpError(
                "invalid", f"{show(parts)} is not a directory ({exc.strerror})"
            ) from None
        finally:
            os.close(fd)
        return child, [*done, name]

    def open_file(self, parts: list[str]) -> tuple[int, list[str]]:
        """A regular file opened for reading (the last component opened with O_NOFOLLOW)."""
        fd, done, name = self.walk(parts)
        try:
            if name is None:
                raise FileOpError("invalid", f"{WORK_ROOT} is a directory; download an archive")
            try:
                file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                raise FileOpError("not-found", f"{show(parts)} does not exist") from None
            except OSError as exc:
                raise FileOpError("invalid", f"{show(parts)}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            os.close(file_fd)
            raise FileOpError("invalid", f"{show(parts)} is not a regular file")
        return file_fd, [*done, name]


# --- entries -------------------------------------------------------------------------------------


def _owner(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _entry(name: str, dir_fd: int) -> dict[str, Any]:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = (
        "symlink"
        if stat.S_ISLNK(st.st_mode)
        else "dir"
        if stat.S_ISDIR(st.st_mode)
        else "file"
        if stat.S_ISREG(st.st_mode)
        else "other"
    )
    entry: dict[str, Any] = {
        "name": name,
        "type": kind,
        "size": st.st_size,
        "mode": oct(stat.S_IMODE(st.st_mode))[2:].zfill(4),
        "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC).isoformat(),
        "owner": _owner(st.st_uid),
    }
    if kind == "symlink":
        entry["target"] = os.readlink(name, dir_fd=dir_fd)
    return entry


def list_dir(root: Root, path: str, hidden: bool = False) -> dict[str, Any]:
    fd, done = root.open_dir(split_path(path))
    try:
        names = sorted(os.listdir(fd))
        files = []
        for name in names:
            if (name.startswith(".") and not hidden) or name.startswith(TEMP_PREFIX):
                continue
            try:
                files.append(_entry(name, fd))
            except FileNotFoundError:  # removed while listing
                continue
        return {"path": show(done), "files": files}
    finally:
        os.close(fd)


def stat_file(root: Root, path: str) -> dict[str, Any]:
    """What a download needs to know before its first byte: the resolved name and the size."""
    fd, done = root.open_file(split_path(path))
    try:
        st = os.fstat(fd)
        return {"path": show(done), "name": done[-1], "size": st.st_size, "mtime": st.st_mtime}
    finally:
        os.close(fd)


def check_paths(root: Root, paths: list[str]) -> list[str]:
    """Each path of an archive exists inside the root (resolved); their resolved paths."""
    found = []
    for path in paths:
        parts = split_path(path)
        fd, done, name = root.walk(parts)
        try:
            if name is not None:
                try:
                    os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    raise FileOpError("not-found", f"{show(parts)} does not exist") from None
                done = [*done, name]
        finally:
            os.close(fd)
        found.append(show(done))
    return found


def read_file(
    root: Root, path: str, sink: Callable[[bytes], Any], offset: int = 0, length: int | None = None
) -> None:
    """Copy a file (or the range ``offset``, ``length``) to ``sink`` in chunks."""
    fd, _done = root.open_file(split_path(path))
    try:
        remaining = os.fstat(fd).st_size - offset if length is None else length
        position = offset
        while remaining > 0:
            data = os.pread(fd, min(CHUNK, remaining), position)
            if not data:
                break
            sink(data)
            position += len(data)
            remaining -= len(data)
    finally:
        os.close(fd)


# --- archives -----------------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """A write-only, non-seekable stream over a callback (tarfile and zipfile write into it)."""

    def __init__(self, sink: Callable[[bytes], Any]) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        if chunk:
            self._sink(chunk)
        return len(chunk)


def _walk_tree(dir_fd: int, prefix: str) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """(archive name, parent fd, name, lstat) of everything under a directory, depth first."""
    for name in sorted(os.listdir(dir_fd)):
        if name.startswith(TEMP_PREFIX):
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        arcname = f"{prefix}/{name}"
        yield arcname, dir_fd, name, st
        if stat.S_ISDIR(st.st_mode):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                yield from _walk_tree(child, arcname)
            finally:
                os.close(child)


def _members(root: Root, paths: list[str]) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """Every entry the archive holds, named relative to each requested path's parent."""
    for path in paths:
        parts = split_path(path)
        fd, _done, name = root.walk(parts)
        try:
            if name is None:
                yield from _walk_tree(fd, "work")
                continue
            # Named as asked (a symlink given by name is archived as what it leads to).
            arcname = parts[-1]
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            yield arcname, fd, name, st
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    yield from _walk_tree(child, arcname)
                finally:
                    os.close(child)
        finally:
            os.close(fd)


def _open_member(dir_fd: int, name: str) -> BinaryIO:
    return os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd), "rb")


def write_archive(root: Root, paths: list[str], fmt: str, sink: Callable[[bytes], Any]) -> None:
    """A tar or zip of ``paths`` streamed to ``sink`` as it is made (symlinks stay links in a tar
    and are left out of a zip: their targets are never read)."""
    out = io.BufferedWriter(_Sink(sink), buffer_size=CHUNK)
    if fmt == "tar":
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for arcname, dir_fd, name, st in _members(root, paths):
                info = tarfile.TarInfo(arcname)
                info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
                info.uid, info.gid = st.st_uid, st.st_gid
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    with _open_member(dir_fd, name) as handle:
                        info.size = os.fstat(handle.fileno()).st_size
                        tar.addfile(info, handle)
    else:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            for arcname, dir_fd, name, st in _members(root, paths):
                when = datetime.datetime.fromtimestamp(max(st.st_mtime, 315532800))
                if stat.S_ISDIR(st.st_mode):
                    entry = zipfile.ZipInfo(arcname + "/", when.timetuple()[:6])
                    entry.external_attr = (0o40000 | stat.S_IMODE(st.st_mode)) << 16 | 0x10
                    archive.writestr(entry, b"")
                elif stat.S_ISREG(st.st_mode):
                    entry = zipfile.ZipInfo(arcname, when.timetuple()[:6])
                    entry.external_attr = (0o100000 | stat.S_IMODE(st.st_mode)) << 16
                    with (
                        _open_member(dir_fd, name) as handle,
                        archive.open(entry, "w", force_zip64=True) as target,
                    ):
                        shutil.copyfileobj(handle, target, CHUNK)
    out.flush()


# --- changes ------------------------------------------------------------------------------------


def make_dir(root: Root, path: str) -> dict[str, Any]:
    parts = split_path(path)
    if not parts:
        raise FileOpError("conflict", f"{WORK_ROOT} exists")
    made: list[list[str]] = []
    fd, done, name = root.walk(parts, follow_last=False, create=made)
    try:
        assert name is not None
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except FileExistsError:
            raise FileOpError("conflict", f"{show([*done, name])} already exists") from None
        return {"path": show([*done, name]), "type": "dir"}
    finally:
        os.close(fd)


def delete(root: Root, path: str, recursive: bool = False) -> dict[str, Any]:
    parts = split_path(path)
    if not parts:
        raise FileOpError("invalid", f"{WORK_ROOT} itself can't be deleted")
    fd, done, name = root.walk(parts, follow_last=False)
    try:
        assert name is not None
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileOpError("not-found", f"{show(parts)} does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                shutil.rmtree(name, dir_fd=fd)
            else:
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError:
                    raise FileOpError(
                        "conflict",
                        f"{show(parts)} is a directory that is not empty; "
                        "delete it with recursive=true",
                    ) from None
        else:
            os.unlink(name, dir_fd=fd)
        return {"path": show([*done, name])}
    finally:
        os.close(fd)


def move(root: Root, src: str, dst: str, overwrite: bool = False) -> dict[str, Any]:
    """Rename ``src`` (the link itself, when it is one) to ``dst``; parents of dst are made."""
    src_parts, dst_parts = split_path(src), split_path(dst)
    if not src_parts or not dst_parts:
        raise FileOpError("invalid", f"{WORK_ROOT} itself can't be moved or replaced")
    src_fd, src_done, src_name = root.walk(src_parts, follow_last=False)
    try:
        assert src_name is not None
        try:
            os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileOpError("not-found", f"{show(src_parts)} does not exist") from None
        made: list[list[str]] = []
        dst_fd, dst_done, dst_name = root.walk(dst_parts, follow_last=False, create=made)
        try:
            assert dst_name is not None
            if [*dst_done, dst_name][: len(src_done) + 1] == [*src_done, src_name]:
                raise FileOpError("invalid", "a directory can't be moved into itself")
            exists = True
            try:
                os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
            except FileNotFoundError:
                exists = False
            if exists and not overwrite:
                raise FileOpError("conflict", f"{show([*dst_done, dst_name])} already exists")
            try:
                os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except OSError as exc:
                raise FileOpError("conflict", f"can't move: {exc.strerror}") from None
            return {"path": show([*dst_done, dst_name]), "from": show([*src_done, src_name])}
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def usage(root: Root) -> int:
    """Bytes of the regular files under the root (apparent sizes; links are not followed)."""
    total = 0
    for _dirpath, _dirs, files, dir_fd in os.fwalk(dir_fd=root.fd):
        for name in files:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class Upload:
    """One upload request: each file goes to a hidden temporary beside its target, and only a
    complete request is committed (renamed into place); ``abort`` removes everything it made."""

    def __init__(self, root: Root, dest: str, overwrite: bool) -> None:
        self.root = root
        self.base = split_path(dest)
        self.overwrite = overwrite
        self._made: list[list[str]] = []
        #: (dir fd, temporary name, final name, shown path, size) per file.
        self._files: list[list[Any]] = []
        self._current: int | None = None
        self._targets: set[str] = set()
        self._splice = True

    def begin(self, relpath: str) -> None:
        if relpath.startswith("/"):
            raise FileOpError("invalid", f"upload file names must be relative: {relpath!r}")
        parts = split_path(relpath, base=self.base)
        if len(parts) <= len(self.base) or parts[: len(self.base)] != self.base:
            raise FileOpError("invalid", f"{relpath!r} does not name a file under the destination")
        fd, done, name = self.root.walk(parts, follow_last=False, create=self._made)
        shown = show([*done, str(name)])
        entry: list[Any] = [fd, "", name, shown, 0]
        self._files.append(entry)
        if shown in self._targets:
            raise FileOpError("invalid", f"{shown} is given twice in this upload")
        self._targets.add(shown)
        self._check_target(fd, str(name), shown)
        temp = f"{TEMP_PREFIX}{os.urandom(8).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._current = os.open(temp, flags, 0o644, dir_fd=fd)
        entry[1] = temp

    def _check_target(self, fd: int, name: str, shown: str) -> None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise FileOpError("conflict", f"{shown} is a directory")
        if not self.overwrite:
            raise FileOpError("conflict", f"{shown} already exists (overwrite=true replaces it)")

    def write(self, data: bytes) -> None:
        assert self._current is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._current, view) :]
        self._files[-1][4] += len(data)

    def splice(self, source: int, size: int) -> None:
        """Move ``size`` bytes from the pipe ``source`` into the file being written: with
        ``os.splice`` the kernel moves them (one copy less than a read and a write); where it
        can't (not Linux, not a pipe), they are read and written."""
        assert self._current is not None
        while size > 0:
            moved = 0
            if self._splice:
                try:
                    moved = os.splice(source, self._current, size)
                except (OSError, AttributeError):
                    self._splice = False
                    continue
            else:
                data = os.read(source, min(size, CHUNK))
                if data:
                    self.write(data)
                    size -= len(data)
                    continue
            if not moved:
                raise EOFError  # the server went away in the middle of a frame
            size -= moved
            self._files[-1][4] += moved

    def end(self) -> None:
        if self._current is not None:
            os.close(self._current)
            self._current = None

    def commit(self) -> list[dict[str, Any]]:
        self.end()
        results = []
        for fd, temp, name, shown, size in self._files:
            self._check_target(fd, name, shown)
            existed = True
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                existed = False
            os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
            results.append(
                {"path": shown, "size": size, "status": "replaced" if existed else "created"}
            )
        self._close_all()
        return results

    def abort(self) -> None:
        self.end()
        for fd, temp, *_rest in self._files:
            if temp:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=fd)
        self._close_all()
        for parts in reversed(self._made):
            try:
                fd, _done, name = self.root.walk(parts, follow_last=False)
            except (FileOpError, OSError):
                continue
            try:
                os.rmdir(str(name), dir_fd=fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _close_all(self) -> None:
        for entry in self._files:
            if entry[0] >= 0:
                os.close(entry[0])
                entry[0] = -1


# --- in-process bridges between the event loop and the threads doing the work (both agents) ----


class _Stopped(Exception):
    """The reader of a stream went away; the producing thread stops."""


async def stream_from_thread(
    produce: Callable[[Callable[[bytes], None]], None], depth: int = 8
) -> AsyncIterator[bytes]:
    """Run ``produce(sink)`` in a thread and yield what it passes to ``sink`` as it comes.

    At most ``depth`` chunks wait between the thread and the reader, so memory stays flat; a reader
    that stops early (``aclose``) stops the thread at its next chunk. The thread hands a chunk on
    without waiting for the loop to take it (it waits only when ``depth`` chunks are queued).
    """
    loop = asyncio.get_running_loop()
    queue_: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    room = threading.Semaphore(depth)
    stopped = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        room.acquire()
        if stopped.is_set():
            raise _Stopped
        loop.call_soon_threadsafe(queue_.put_nowait, item)

    pending: list[bytes] = []
    size = 0

    def gather(chunk: bytes) -> None:
        """Hand on ~CHUNK at a time: one hop to the loop per MiB, not per engine frame."""
        nonlocal size
        pending.append(chunk)
        size += len(chunk)
        if size >= CHUNK:
            put(("data", pending[0] if len(pending) == 1 else b"".join(pending)))
            pending.clear()
            size = 0

    def run() -> None:
        try:
            produce(gather)
            if pending:
                put(("data", b"".join(pending)))
            put(("end", None))
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the reader, raised there
            with contextlib.suppress(_Stopped, RuntimeError):
                put(("error", exc))

    threading.Thread(target=run, name="jsess-files-read", daemon=True).start()
    try:
        while True:
            kind, value = await queue_.get()
            room.release()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stopped.set()
        room.release()  # a thread waiting for room wakes, sees the stop, and ends


def pull_from_loop(
    source: AsyncIterator[Any], loop: asyncio.AbstractEventLoop, depth: int = 2
) -> Generator[Any, None, None]:
    """Iterate an async iterator of the loop from a thread.

    A task on the loop pulls up to ``depth`` items ahead into a thread-safe queue, so the thread
    takes the next item without waiting for the loop to be scheduled (one blocking round trip per
    item halved the upload rate). Closing this iterator (or dropping it) cancels that task.
    """
    items: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    room = asyncio.Semaphore(depth)

    async def pump() -> None:
        try:
            while True:
                await room.acquire()
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    items.put((_END, None))
                    return
                items.put((_ITEM, item))
        except BaseException as exc:  # handed to the thread, raised there
            items.put((_ERROR, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    future = asyncio.run_coroutine_threadsafe(pump(), loop)
    try:
        while True:
            kind, value = items.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            loop.call_soon_threadsafe(room.release)
            yield value
    finally:
        future.cancel()


_ITEM, _END, _ERROR = 0, 1, 2


def consume_upload(upload: Upload, events: Iterator[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Feed an upload from ("begin", relpath), ("data", bytes), ("end", None) events; commit when
    they end, remove everything written when they raise."""
    try:
        for kind, value in events:
            if kind == "begin":
                upload.begin(value)
            elif kind == "data":
                upload.write(value)
            elif kind == "splice":
                upload.splice(*value)
            else:
                upload.end()
        return upload.commit()
    except BaseException:
        upload.abort()
        raise


# --- the program run inside a container ---------------------------------------------------------

#: Upload framing on the helper's stdin: a tag byte and, but for END/COMMIT, a 4-byte length.
BEGIN, DATA, END, COMMIT = b"F", b"D", b"E", b"C"
#: Pipe capacity asked for the helper's stdin or stdout (the unprivileged maximum by default).
PIPE_SIZE = 1 << 20


def _widen_pipe(fd: int) -> None:
    """Make a pipe hold a whole chunk: with the default 64 KiB, the engine's copier and the
    helper take turns every 64 KiB, which costs about a third of the throughput."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # not a pipe, or over the limit: as is


def _read_exact(fd: int, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _stdin_events(fd: int) -> Iterator[tuple[str, Any]]:
    """Upload events from the framing on stdin; EOF before COMMIT means the server gave up.

    Read unbuffered: a DATA frame's bytes are left in the pipe as ``("splice", (fd, size))``, for
    ``Upload.splice`` to move into the file without copying them through this process.
    """
    while True:
        tag = os.read(fd, 1)
        if tag == COMMIT:
            return
        if tag == END:
            yield "end", None
            continue
        if tag not in (BEGIN, DATA):
            raise EOFError
        (size,) = struct.unpack(">I", _read_exact(fd, 4))
        if tag == BEGIN:
            yield "begin", _read_exact(fd, size).decode("utf-8", "surrogateescape")
        else:
            yield "splice", (fd, size)


def answer(root_path: str, op: str, args: dict[str, Any]) -> Any:
    """An operation with a JSON answer; raises FileOpError."""
    with Root(root_path) as root:
        if op == "list":
            return list_dir(root, args["path"], bool(args.get("hidden")))
        if op == "stat":
            return stat_file(root, args["path"])
        if op == "check":
            return check_paths(root, args["paths"])
        if op == "mkdir":
            return make_dir(root, args["path"])
        if op == "delete":
            return delete(root, args["path"], bool(args.get("recursive")))
        if op == "move":
            return move(root, args["src"], args["dst"], bool(args.get("overwrite")))
        if op == "usage":
            return usage(root)
    raise FileOpError("invalid", f"unknown operation {op!r}")


def produce(root_path: str, op: str, args: dict[str, Any], sink: Callable[[bytes], Any]) -> None:
    """The bytes of a ``read`` (``path``, ``offset``, ``length``) or an ``archive``, to ``sink``."""
    with Root(root_path) as root:
        if op == "read":
            read_file(root, args["path"], sink, args.get("offset", 0), args.get("length"))
        elif op == "archive":
            write_archive(root, args["paths"], args["format"], sink)
        else:
            raise FileOpError("invalid", f"unknown operation {op!r}")


def receive(root_path: str, args: dict[str, Any], events: Iterator[tuple[str, Any]]) -> Any:
    """An upload into ``args["path"]`` from events (see ``consume_upload``)."""
    with Root(root_path) as root:
        return consume_upload(Upload(root, args["path"], bool(args.get("overwrite"))), events)


def os_error(exc: OSError) -> FileOpError:
    """What a failed system call means to the client."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return FileOpError("too-large", f"no space left for the files: {exc.strerror}")
    if isinstance(exc, PermissionError):
        return FileOpError("denied", f"not allowed: {exc.strerror}")
    return FileOpError("failed", f"{exc.strerror or exc}")


def in_process(call: Callable[..., Any], *args: Any) -> Any:
    """Run an operation in this process (the local agent), raising the server's errors."""
    try:
        return call(*args)
    except FileOpError as exc:
        raise to_error(exc.kind, exc.message) from None
    except OSError as exc:
        error = os_error(exc)
        raise to_error(error.kind, error.message) from None


def main(argv: list[str]) -> int:
    """``<op> <json args>``: a JSON answer on stdout, or the bytes of a read or an archive."""
    op, args = argv[0], json.loads(argv[1])
    stdout = sys.stdout.buffer
    root_path = args.get("root", WORK_ROOT)
    if op in ("read", "archive"):
        # Bytes go to stdout; a failure (after stat/check said yes) goes to stderr and exit 1.
        _widen_pipe(stdout.fileno())
        try:
            produce(root_path, op, args, stdout.write)
            stdout.flush()
            return 0
        except (FileOpError, OSError) as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
    try:
        result: Any
        if op == "upload":
            _widen_pipe(sys.stdin.fileno())
            try:
                result = receive(root_path, args, _stdin_events(sys.stdin.fileno()))
            except EOFError:
                result = {"aborted": True}
        else:
            result = answer(root_path, op, args)
        stdout.write(json.dumps({"ok": result}).encode() + b"\n")
    except (FileOpError, OSError) as exc:
        error = exc if isinstance(exc, FileOpError) else os_error(exc)
        stdout.write(json.dumps({"error": [error.kind, error.message]}).encode() + b"\n")
    stdout.flush()
    if op == "upload":
        # The server stops sending once it reads the answer; until then, take what it sent.
        while sys.stdin.buffer.read(CHUNK):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
