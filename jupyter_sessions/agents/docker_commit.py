"""Committing a session's container to an image that holds its work volume and not its environ.

``docker commit`` leaves volumes out, and it merges the container's configuration (its
environment, which holds the session's ``environ``, and our labels) into the image. So the image
is made from a clean container instead: created (never started) from the session's own image, it
receives the session container's file-system changes and the content of ``/home/work`` as
archives, and is committed. Its configuration is the original image's, untouched. Files the
session deleted from the image stay in the committed image (archives can't carry deletions).

Every function here blocks: run them through ``DockerAgent.call``.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors

from ..errors import AgentError, NotFound

WORK_DIR = "/home/work"
#: Never copied: the kernel's connection file (its key), our exec pid files, what Docker manages.
EXCLUDED = (
    "/tmp/connection.json",  # noqa: S108 - a path inside the container
    "/tmp/jsess-exec-",  # noqa: S108 - a path inside the container
    "/etc/hosts",
    "/etc/hostname",
)
EXCLUDED_TREES = (WORK_DIR, "/proc", "/sys", "/dev", "/etc/resolv.conf")
LABEL_COMMITTED_FROM = "org.jupyter.sessions.committed-from"
#: Spooled archives stay in memory up to this size, then go to a temporary file.
SPOOL_BYTES = 16 * 2**20


def changed_paths(diff: Iterable[dict[str, Any]], mounts: Iterable[str] = ()) -> list[str]:
    """The paths to copy so that every added or changed file arrives: added trees from their top,
    changed entries that are leaves (a changed directory's changed children are listed too).
    Deleted ones (Kind 2) are skipped."""
    trees = (*EXCLUDED_TREES, *mounts)
    entries = {
        str(e["Path"]): int(e["Kind"])
        for e in diff
        if int(e["Kind"]) in (0, 1)
        and not str(e["Path"]).startswith(EXCLUDED)
        and not any(str(e["Path"]) == t or str(e["Path"]).startswith(t + "/") for t in trees)
    }
    added = {p for p, kind in entries.items() if kind == 1}
    parents = {str(parent) for p in entries for parent in PurePosixPath(p).parents}
    chosen = []
    for path, kind in sorted(entries.items()):
        if any(str(parent) in added for parent in PurePosixPath(path).parents):
            continue  # inside an added tree, which is copied whole
        if kind == 1 or path not in parents:
            chosen.append(path)
    return chosen


def _copy(source: Any, destination: Any, path: str, into: str) -> None:
    """One archive of ``path`` from ``source``, spooled, extracted in ``into`` of destination."""
    chunks, _stat = source.get_archive(path)
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        if not destination.put_archive(into, spool):
            raise AgentError(f"could not copy {path} into the image")


def prepare_clean_container(
    client: docker.DockerClient, session_container: str, image: str, name: str
) -> tuple[str, int]:
    """A created container of ``image`` holding the session's file-system changes; returns its
    id and how many paths were copied."""
    try:
        source = client.containers.get(session_container)
    except docker.errors.NotFound:
        raise NotFound("the session's container is gone") from None
    mounts = [m.get("Destination", "") for m in source.attrs.get("Mounts") or []]
    paths = changed_paths(source.diff() or [], [m for m in mounts if m])
    remove_container(client, name)
    destination = client.containers.create(image, name=name, network_disabled=True)
    try:
        for path in paths:
            try:
                _copy(source, destination, path, str(PurePosixPath(path).parent))
            except docker.errors.NotFound:
                continue  # gone since the diff was read
    except BaseException:
        remove_container(client, name)
        raise
    return destination.id or "", len(paths)


def copy_work_volume(client: docker.DockerClient, session_container: str, target: str) -> None:
    """The content of ``/home/work`` (the volume, read through the session's container)."""
    source = client.containers.get(session_container)
    destination = client.containers.get(target)
    _copy(source, destination, WORK_DIR, str(PurePosixPath(WORK_DIR).parent))


def commit(
    client: docker.DockerClient, container: str, repository: str, tag: str, session_id: str
) -> str:
    """Commit the clean container; the image's configuration stays the original image's."""
    image = client.containers.get(container).commit(
        repository=repository,
        tag=tag,
        changes=[f"LABEL {LABEL_COMMITTED_FROM}={session_id}"],
    )
    return image.id or ""


def export_gzip(client: docker.DockerClient, image_id: str, path: Path) -> int:
    """``docker save`` of the image, gzip-compressed (fast level) into ``path``; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with gzip.open(partial, "wb", compresslevel=1) as out:
            for chunk in client.images.get(image_id).save(named=True):
                out.write(chunk)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path.stat().st_size


def push(client: docker.DockerClient, repository: str, tag: str) -> str:
    """Push to the registry the repository names; the engine's error when it fails (or "")."""
    for line in client.images.push(repository, tag=tag, stream=True, decode=True):
        if isinstance(line, dict) and line.get("error"):
            return str(line.get("error"))
    return ""


def remove_container(client: docker.DockerClient, name: str) -> None:
    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        return


def remove_image(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.remove(image, force=True, noprune=False)
    except docker.errors.NotFound:
        return


def image_id_of(client: docker.DockerClient, name: str) -> str | None:
    try:
        return client.images.get(name).id
    except docker.errors.ImageNotFound:
        return None


def prune_archives(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` archives of a session's folder (0 keeps all)."""
    if keep <= 0:
        return []
    archives = sorted(folder.glob("*.tar.gz"), key=lambda p: p.name)  # names are UTC times
    removed = archives[:-keep]
    for old in removed:
        old.unlink(missing_ok=True)
    return removed
