"""Mounts: host folders of the Jupyter server's content root bound into a session's container.

This module owns the ``mounts`` field of ``POST sessions``: its shape (``parse_mounts``), the
policy that resolves a request against the content root (``MountPolicy``: only the server's
owner, only paths under ``root_dir`` after symlinks are resolved, never a system directory,
read-only or read-write by config), the re-check made right before a container is created, and
the Docker mount objects (local engines only). The local agent has no containers: for it a
mount is only the folder its kernel starts in (``local_working_dir``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import InvalidRequest, PermissionDenied

#: Most mounts one session may have.
MAX_MOUNTS = 8
#: Where mounts may go inside the container (the work directory's subfolders, or /mnt).
TARGET_PARENTS = ("/home/work/", "/mnt/")
#: Host directories never mounted, nor anything inside them.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/run",
)
#: Host directories never mounted themselves (their subfolders may be, when under the root).
SYSTEM_DIRS = ("/", "/home", "/var", "/opt", "/srv", "/mnt", "/media", "/tmp")  # noqa: S108 - refused, not used
_FIELDS = frozenset({"source", "target", "read_only", "working_dir"})


@dataclass(frozen=True)
class Mount:
    """One mount: a host path and where it appears in the container.

    As requested, ``source`` is relative to the content root (or absolute under it); once
    resolved by ``MountPolicy``, it is the absolute, symlink-free host path. ``working_dir`` is
    a folder inside the mount (relative to it) where the kernel starts, or None.
    """

    source: str
    target: str | None = None
    read_only: bool | None = None
    working_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "read_only": self.read_only,
            "working_dir": self.working_dir,
        }

    @property
    def container_working_dir(self) -> str | None:
        if self.working_dir is None or self.target is None:
            return None
        return posixpath.normpath(posixpath.join(self.target, self.working_dir))


def _text(item: Mapping[str, Any], key: str, index: int) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024 or "\0" in value:
        raise InvalidRequest(
            f"mounts[{index}].{key} must be a non-empty path string", field=f"mounts[{index}]"
        )
    return value


def _check_target(target: str, index: int) -> str:
    normal = posixpath.normpath(target)
    if (
        not target.startswith("/")
        or normal != target.rstrip("/")
        or not normal.startswith(TARGET_PARENTS)
        or any(c in normal for c in ",:\n")
    ):
        raise InvalidRequest(
            f"mounts[{index}].target must be a normalized absolute path under "
            f"{' or '.join(p.rstrip('/') for p in TARGET_PARENTS)} (not the folder itself)",
            field=f"mounts[{index}].target",
        )
    return normal


def _check_working_dir(value: str, index: int) -> str:
    normal = posixpath.normpath(value)
    if normal.startswith(("/", "..")) or "\n" in normal:
        raise InvalidRequest(
            f"mounts[{index}].working_dir must be a folder inside the mount (a relative path)",
            field=f"mounts[{index}].working_dir",
        )
    return normal


def parse_mounts(raw: Any) -> tuple[Mount, ...]:
    """The shape of ``mounts``: a list of ``{source, target?, read_only?, working_dir?}``."""
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_MOUNTS:
        raise InvalidRequest(
            f"mounts must be a list of at most {MAX_MOUNTS} objects", field="mounts"
        )
    mounts: list[Mount] = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"mounts[{index}] must be an object", field=f"mounts[{index}]")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise InvalidRequest(
                f"mounts[{index}]: unknown fields {', '.join(unknown)} "
                f"(a mount takes {', '.join(sorted(_FIELDS))})",
                field=f"mounts[{index}]",
            )
        source = _text(item, "source", index)
        if source is None:
            raise InvalidRequest(f"mounts[{index}].source is required", field=f"mounts[{index}]")
        target = _text(item, "target", index)
        read_only = item.get("read_only")
        if read_only is not None and not isinstance(read_only, bool):
            raise InvalidRequest(
                f"mounts[{index}].read_only must be true or false",
                field=f"mounts[{index}].read_only",
            )
        working_dir = _text(item, "working_dir", index)
        mounts.append(
            Mount(
                source=source,
                target=_check_target(target, index) if target is not None else None,
                read_only=read_only,
                working_dir=_check_working_dir(working_dir, index) if working_dir else None,
            )
        )
    if sum(m.working_dir is not None for m in mounts) > 1:
        raise InvalidRequest("at most one mount may set working_dir", field="mounts")
    return tuple(mounts)


def is_system_path(path: str) -> bool:
    """Whether a (resolved, absolute) host path is, or lies in, a directory never mounted."""
    if path in SYSTEM_DIRS:
        return True
    return any(path == tree or path.startswith(tree + "/") for tree in SYSTEM_TREES)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass
class MountPolicy:
    """Who may mount what: set from the server's ``root_dir`` and ``SessionsApp`` traitlets."""

    #: The Jupyter server's content root; every mount lies under it (after symlinks).
    root_dir: str
    #: Where a mount without a ``target`` appears in the container.
    default_target: str = "/home/work/notebooks"
    #: True: every mount is read-only. False: read-write unless the request asks read-only.
    read_only: bool = False
    #: The server owner's access key, the only caller that may mount (set at start-up).
    owner_access_key: str | None = None

    def resolve(self, requested: tuple[Mount, ...], access_key: str) -> tuple[Mount, ...]:
        """Each requested mount checked and made absolute; PermissionDenied or InvalidRequest."""
        if not requested:
            return ()
        if self.owner_access_key is None or access_key != self.owner_access_key:
            raise PermissionDenied(
                "only the server's owner may mount folders of its content root", field="mounts"
            )
        root = os.path.realpath(self.root_dir)
        targets: set[str] = set()
        resolved = []
        for index, mount in enumerate(requested):
            source = self._resolve_source(mount.source, root, index)
            target = mount.target or self.default_target
            _check_target(target, index)
            if any(_within(target, t) or _within(t, target) for t in targets):
                raise InvalidRequest(
                    f"mounts[{index}].target {target} overlaps another mount",
                    field=f"mounts[{index}].target",
                )
            targets.add(target)
            if mount.read_only is False and self.read_only:
                raise PermissionDenied(
                    "mounts are read-only on this server (c.SessionsApp.mount_read_only)",
                    field=f"mounts[{index}].read_only",
                )
            read_only = self.read_only if mount.read_only is None else mount.read_only
            if mount.working_dir is not None:
                inside = os.path.realpath(os.path.join(source, mount.working_dir))
                if not _within(inside, source) or not os.path.isdir(inside):
                    raise InvalidRequest(
                        f"mounts[{index}].working_dir is not a folder inside the mount",
                        field=f"mounts[{index}].working_dir",
                    )
            resolved.append(Mount(source, target, read_only, mount.working_dir))
        return tuple(resolved)

    def _resolve_source(self, source: str, root: str, index: int) -> str:
        path = source if os.path.isabs(source) else os.path.join(root, source)
        real = os.path.realpath(path)  # every symlink resolved: the path the engine will bind
        field = f"mounts[{index}].source"
        if not _within(real, root):
            raise PermissionDenied(
                f"mounts[{index}].source is not under the server's content root", field=field
            )
        if is_system_path(real):
            raise PermissionDenied(
                f"mounts[{index}].source is a system directory, never mounted", field=field
            )
        if not os.path.exists(real):
            raise InvalidRequest(f"mounts[{index}].source does not exist", field=field)
        return real

    def recheck(self, mounts: tuple[Mount, ...]) -> None:
        """Right before a container is made: each stored source is still itself (no symlink
        swapped in since the create) and still under the root."""
        root = os.path.realpath(self.root_dir)
        for index, mount in enumerate(mounts):
            if (
                os.path.realpath(mount.source) != mount.source
                or not _within(mount.source, root)
                or is_system_path(mount.source)
                or not os.path.exists(mount.source)
            ):
                raise PermissionDenied(
                    f"mounts[{index}].source {mount.source} changed since the session was "
                    "created (moved, removed or replaced by a symlink); it is not mounted",
                    field="mounts",
                )


def stored_mounts(params: Mapping[str, Any]) -> tuple[Mount, ...]:
    """The resolved mounts kept in a session's ``params`` (empty for sessions without any)."""
    return tuple(Mount(**m) for m in params.get("mounts") or ())


def working_dir_of(mounts: tuple[Mount, ...]) -> str | None:
    """Where the kernel starts: the one mount's ``working_dir`` in the container, if any."""
    for mount in mounts:
        if mount.container_working_dir is not None:
            return mount.container_working_dir
    return None


def local_working_dir(mounts: tuple[Mount, ...], agent_id: str) -> str | None:
    """For the local agent (no containers): where the kernel starts, on the host. Its kernels
    already see the host's files, so a mount is only where it starts; read-only can't be
    enforced without a container, so it is refused rather than ignored. (Blocking.)"""
    if any(m.read_only for m in mounts):
        raise InvalidRequest(
            f"agent {agent_id} runs kernels on this host without containers: it can't make a "
            "mount read-only (use a Docker agent, or a read-write mount)",
            field="mounts",
        )
    for mount in mounts:
        if mount.working_dir is not None:
            return os.path.realpath(os.path.join(mount.source, mount.working_dir))
    return None


def is_local_engine(url: str) -> bool:
    """Whether a Docker engine URL is this host's own (a unix socket): binds need the host's
    files, so remote engines refuse mounts."""
    return urlparse(url).scheme in ("unix", "http+unix", "npipe") or url.startswith("/")


def docker_mounts(mounts: tuple[Mount, ...], agent_id: str, url: str) -> list[Any]:
    """Docker SDK bind mounts; InvalidRequest for an engine on another host."""
    from docker.types import Mount as DockerMount

    if not mounts:
        return []
    if not is_local_engine(url):
        raise InvalidRequest(
            f"mounts need a Docker engine on the server's own host; agent {agent_id} is at {url}"
        )
    return [
        DockerMount(
            target=m.target or "",
            source=m.source,
            type="bind",
            read_only=bool(m.read_only),
        )
        for m in mounts
    ]


def host_path_under(root: str, path: str) -> Path | None:
    """``path`` (absolute, or relative to ``root``) resolved, if it lies under ``root``."""
    real = Path(os.path.realpath(os.path.join(root, path)))
    return real if _within(str(real), os.path.realpath(root)) else None
