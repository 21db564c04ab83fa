"""File operations in a Docker session: ``local_files`` run inside the container, as its user.

Every operation is one ``docker exec`` of ``python3 -I -c <local_files source> <op> <json args>``
as the kernel's user (uid 1000) in ``/home/work``: the path is an argv item, never part of a shell
command, and the container's own filesystem view decides where a symlink leads (the walk with
``O_NOFOLLOW`` runs there). So an upload can't write, nor a download read, anything the kernel's
user could not, and nothing outside ``/home/work``.

Bytes are streamed both ways without holding a file: downloads and archives read the exec's
stdout as the engine delivers it; uploads write length-framed chunks into the exec's stdin (a
hijacked connection to the engine), one chunk in flight at a time.

The functions here are blocking (docker SDK); ``DockerAgent`` runs them in threads.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker

from ..errors import AgentError
from . import local_files
from .local_files import BEGIN, CHUNK, COMMIT, DATA, END, to_error

#: The program run in the container: local_files' own source, so both agents share one walk.
HELPER_SOURCE = Path(local_files.__file__).read_text(encoding="utf-8")
WORKDIR = local_files.WORK_ROOT


def helper_argv(op: str, args: dict[str, Any]) -> list[str]:
    return ["python3", "-I", "-c", HELPER_SOURCE, op, json.dumps(args)]


def _answer(stdout: bytes | None, stderr: bytes | None, what: str) -> Any:
    """The helper's JSON answer, or the error it names (anything else is the engine's fault)."""
    lines = (stdout or b"").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        tail = (stderr or b"").decode("utf-8", "replace")[-500:]
        raise AgentError(f"{what}: the file helper in the container failed: {tail or 'no answer'}")
    if "error" in answer:
        kind, message = answer["error"]
        raise to_error(str(kind), str(message))
    return answer["ok"]


def run_op(client: docker.DockerClient, container: str, user: str, op: str, args: Any) -> Any:
    """One operation with a JSON answer (list, stat, check, mkdir, delete, move, usage)."""
    created = client.api.exec_create(
        container, helper_argv(op, args), stdout=True, stderr=True, user=user, workdir=WORKDIR
    )
    stdout, stderr = client.api.exec_start(created["Id"], demux=True)
    return _answer(stdout, stderr, op)


def stream_op(
    client: docker.DockerClient, container: str, user: str, op: str, args: Any
) -> Callable[[Callable[[bytes], None]], None]:
    """A producer (for ``local_files.stream_from_thread``) of a read's or an archive's bytes."""

    def produce(sink: Callable[[bytes], None]) -> None:
        created = client.api.exec_create(
            container, helper_argv(op, args), stdout=True, stderr=True, user=user, workdir=WORKDIR
        )
        errors: list[bytes] = []
        stream = client.api.exec_start(created["Id"], stream=True, demux=True)
        try:
            for out, err in stream:
                if out:
                    sink(out)
                if err:
                    errors.append(err)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        code = _exit_code(client, created["Id"])
        if code != 0:
            text = b"".join(errors).decode("utf-8", "replace")[-500:]
            raise AgentError(f"{op} failed in the container (exit {code}): {text}")

    return produce


class _Chunks:
    """Exact reads over a generator of byte chunks (the engine's archive stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def pass_on(self, size: int, sink: Callable[[bytes], None], skip: int = 0) -> int:
        """Send the next ``size`` bytes to ``sink`` as they come, the first ``skip`` dropped."""
        sent = 0
        while size > 0:
            if not self._buffer:
                self._buffer = next(self._chunks, b"")
                if not self._buffer:
                    break
            piece, self._buffer = self._buffer[:size], self._buffer[size:]
            size -= len(piece)
            if skip >= len(piece):
                skip -= len(piece)
                continue
            sink(piece[skip:] if skip else piece)
            sent += len(piece) - skip
            skip = 0
        return sent


def archive_read(
    client: docker.DockerClient, container: str, path: str, offset: int, length: int
) -> Callable[[Callable[[bytes], None]], None]:
    """A producer of a file's bytes through the engine's archive API (what ``docker cp`` uses).

    ``path`` is what the helper resolved (no symlink on it, inside /home/work); the engine reads
    it again as root within the container's filesystem, so the member must still be a regular
    file (a link swapped in since is refused, not followed).
    """

    def produce(sink: Callable[[bytes], None]) -> None:
        chunks, _stat = client.api.get_archive(container, path, chunk_size=CHUNK)
        stream = _Chunks(iter(chunks))
        try:
            while True:
                block = stream.read(tarfile.BLOCKSIZE)
                if len(block) < tarfile.BLOCKSIZE:
                    raise AgentError(f"the engine's archive of {path} ended early")
                info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
                padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
                    stream.read(padded)  # a long name or PAX record: the member follows
                    continue
                if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise AgentError(f"{path} is no longer a regular file")
                break
            sent = stream.pass_on(min(info.size, offset + length), sink, skip=offset)
            if sent != min(length, max(info.size - offset, 0)):
                raise AgentError(f"{path} changed while it was read")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return produce


def _exit_code(client: docker.DockerClient, exec_id: str, wait: float = 30.0) -> int | None:
    """The exit code once the engine has it (the output ends a moment before the process)."""
    deadline = time.monotonic() + wait
    while True:
        inspected = client.api.exec_inspect(exec_id)
        if not inspected.get("Running") or time.monotonic() > deadline:
            return inspected.get("ExitCode")
        time.sleep(0.02)


def _frames(reader: Callable[[int], bytes]) -> Iterator[tuple[int, bytes]]:
    """Demultiplex an exec's output (8-byte headers: stream, 0, 0, 0, big-endian size)."""
    while True:
        header = _read(reader, 8)
        if len(header) < 8:
            return
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        yield stream, _read(reader, size)


def _read(reader: Callable[[int], bytes], size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = reader(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def upload(
    client: docker.DockerClient,
    container: str,
    user: str,
    args: dict[str, Any],
    events: Iterator[tuple[str, Any]],
) -> Any:
    """Stream an upload into the helper's stdin; commit when ``events`` ends, and when it raises
    close stdin without committing (the helper then removes what it wrote) and re-raise."""
    created = client.api.exec_create(
        container,
        helper_argv("upload", args),
        stdin=True,
        stdout=True,
        stderr=True,
        user=user,
        workdir=WORKDIR,
    )
    conn = client.api.exec_start(created["Id"], socket=True)
    raw: socket.socket = getattr(conn, "_sock", conn)
    output: dict[int, bytes] = {1: b"", 2: b""}
    answered = threading.Event()

    def read_output() -> None:
        """Collect the helper's output; its answer line means it stopped taking data."""
        try:
            for stream, data in _frames(raw.recv):
                output[stream] = output.get(stream, b"") + data
                if stream == 1 and b"\n" in data:
                    answered.set()
        except OSError:
            pass
        finally:
            answered.set()

    reader = threading.Thread(target=read_output, name="jsess-upload-output", daemon=True)
    reader.start()
    failure: BaseException | None = None
    try:
        try:
            for kind, value in events:
                if answered.is_set():
                    break  # the helper refused something (the answer says what)
                if kind == "begin":
                    payload = value.encode("utf-8", "surrogateescape")
                    raw.sendall(BEGIN + struct.pack(">I", len(payload)) + payload)
                elif kind == "data":
                    raw.sendall(DATA + struct.pack(">I", len(value)))
                    raw.sendall(value)
                else:
                    raw.sendall(END)
            else:
                raw.sendall(COMMIT)
        except OSError:
            pass  # the helper went away: its answer, or the lack of one, says why
        except BaseException as exc:
            failure = exc  # the request failed (too large, malformed): no COMMIT, all removed
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
        reader.join()
    finally:
        conn.close()
    if failure is not None:
        raise failure
    return _answer(output[1], output[2], "upload")
