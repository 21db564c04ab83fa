"""Builds the default kernel image from its recipe without any container registry.

This module owns the build: debootstrap a Debian minbase tree, `apt-get install` in a chroot,
download wheels with the host's pip (its own index and certificate settings), install them in
the chroot with no network, add the user and kernelspec, then `docker import` the tree with the
recipe's user, environment, labels and command. Slow steps are cached under
`~/.cache/jupyter_sessions/` (the apt-installed base tree as a tarball, the wheel set) keyed by
what decides their content.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .recipe import (
    BUILDER_VERSION,
    DEFAULT_RECIPE,
    LABEL_RECIPE,
    Recipe,
    canonical_json,
    image_labels,
    image_tag,
    recipe_hash,
)

#: The environment of every command run inside the chroot: nothing of the host's (its pip
#: configuration, proxies, certificates) leaks in.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "PIP_CONFIG_FILE": "/dev/null",
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}

#: Where the wheels are copied inside the tree while pip installs them.
WHEELS_IN_TREE = "/wheels"

#: /proc/self/mounts writes spaces and the like as \040.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says which step failed and why."""


def cache_dir() -> Path:
    """The builder's cache directory (`$XDG_CACHE_HOME/jupyter_sessions` or `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jupyter_sessions"


def host_arch() -> str:
    """The host's machine name as used by manylinux tags (`x86_64` or `aarch64`)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    raise ImageBuildError(f"unsupported host architecture {machine!r} (x86_64 or aarch64 only)")


def wheel_platforms(recipe: Recipe = DEFAULT_RECIPE, arch: str | None = None) -> list[str]:
    """pip `--platform` tags the image's glibc can load, newest first, and `any`.

    pip does not expand `manylinux_2_N` tags itself, so every one is listed.
    """
    arch = arch or host_arch()
    major, newest = recipe.glibc_version
    tags = [f"manylinux_{major}_{minor}_{arch}" for minor in range(newest, 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch == "x86_64":
        tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    tags.append("any")
    return tags


def import_changes(recipe: Recipe = DEFAULT_RECIPE) -> list[str]:
    """Dockerfile instructions applied by `docker import` (user, workdir, env, labels, cmd)."""
    changes = [f"USER {recipe.uid}:{recipe.gid}", f"WORKDIR {recipe.home}"]
    changes += [f"ENV {name}={value}" for name, value in recipe.env]
    # LABEL values are quoted: the services JSON holds quotes; json.dumps escapes them the way
    # the Dockerfile parser unescapes double-quoted words.
    changes += [f"LABEL {name}={json.dumps(value)}" for name, value in image_labels(recipe).items()]
    changes.append(f"CMD {json.dumps(list(recipe.cmd))}")
    return changes


class _Progress:
    """Reports build steps with the seconds elapsed since the build started."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self._progress = progress
        self._start = time.monotonic()

    def __call__(self, message: str) -> None:
        self._progress(f"[{time.monotonic() - self._start:6.1f}s] {message}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(
    args: Sequence[str | os.PathLike[str]],
    what: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Runs a command (an argument list, never a shell string); its failure becomes an
    ImageBuildError carrying the end of its stderr. Returns stdout."""
    argv = [os.fspath(a) for a in args]
    try:
        done = subprocess.run(
            argv, check=True, capture_output=True, text=True, errors="replace", env=env, cwd=cwd
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: command not found: {argv[0]}") from exc
    except subprocess.CalledProcessError as exc:
        output = _tail(exc.stderr or "") or _tail(exc.stdout or "")
        raise ImageBuildError(
            f"{what} failed (exit status {exc.returncode}): {shlex.join(argv)}\n{output}"
        ) from exc
    return done.stdout


def _chroot(root: Path, args: Sequence[str], what: str) -> str:
    return _run(["chroot", root, *args], what, env=CHROOT_ENV)


def _key(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


def _base_key(recipe: Recipe, arch: str) -> str:
    """What decides the apt-installed base tree."""
    return _key(
        {
            "builder_version": BUILDER_VERSION,
            "arch": arch,
            "suite": recipe.suite,
            "variant": recipe.variant,
            "mirror": recipe.mirror,
            "apt_sources": recipe.apt_sources,
            "apt_packages": recipe.apt_packages,
        }
    )


def _wheels_key(recipe: Recipe, arch: str) -> str:
    """What decides the downloaded wheel set."""
    return _key(
        {
            "builder_version": BUILDER_VERSION,
            "python_version": recipe.python_version,
            "platforms": wheel_platforms(recipe, arch),
            "packages": recipe.python_packages,
        }
    )


def _check_host() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the kernel image needs root (debootstrap, chroot and file ownership); "
            "run `python -m jupyter_sessions.images` as root, or build images/Dockerfile "
            "where a registry is reachable"
        )
    for tool in ("debootstrap", "chroot", "tar"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":" + _TOOL_PATH) is None:
            hint = " (apt-get install debootstrap)" if tool == "debootstrap" else ""
            raise ImageBuildError(f"{tool} is needed to build the kernel image{hint}")


def _download_wheels(recipe: Recipe, arch: str, say: _Progress) -> Path:
    """The recipe's wheels for the image's Python, downloaded by the host's pip, cached."""
    cache = cache_dir()
    target = cache / f"wheels-{_wheels_key(recipe, arch)}"
    if target.is_dir():
        say(f"wheels cached in {target}")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=cache))
    say(f"downloading wheels with the host's pip: {' '.join(recipe.python_packages)}")
    try:
        args: list[str] = [sys.executable, "-m", "pip", "download", "--dest", str(partial)]
        args += ["--only-binary=:all:", "--python-version", recipe.python_version]
        args += ["--implementation", "cp", "--abi", "cp" + recipe.python_version.replace(".", "")]
        for tag in wheel_platforms(recipe, arch):
            args += ["--platform", tag]
        args += ["--disable-pip-version-check", "--progress-bar", "off"]
        _run([*args, *recipe.python_packages], "pip download (host)")
        try:
            partial.rename(target)
        except OSError:  # another build finished the same set first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    count = len(list(target.glob("*.whl")))
    say(f"downloaded {count} wheels into {target}")
    return target


def _write_sources(root: Path, recipe: Recipe) -> None:
    (root / "etc/apt/sources.list").write_text("\n".join(recipe.apt_sources) + "\n")


def _make_base(root: Path, recipe: Recipe, arch: str, say: _Progress) -> None:
    """Fills `root` with the suite plus the apt packages, from the cached tarball if any."""
    cache = cache_dir()
    tarball = cache / f"base-{recipe.suite}-{_base_key(recipe, arch)}.tar"
    root.mkdir()
    if tarball.is_file():
        say(f"unpacking the cached base tree {tarball}")
        _run(["tar", "--numeric-owner", "-xpf", tarball, "-C", root], "unpacking the base tree")
        return
    say(f"debootstrap --variant={recipe.variant} {recipe.suite} from {recipe.mirror}")
    _run(
        ["debootstrap", f"--variant={recipe.variant}", recipe.suite, root, recipe.mirror],
        "debootstrap",
    )
    _write_sources(root, recipe)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    say("apt-get update (in the chroot)")
    _chroot(root, ["apt-get", "update"], "apt-get update")
    say("apt-get upgrade (security and point-release fixes, in the chroot)")
    _chroot(root, ["apt-get", "upgrade", "-y"], "apt-get upgrade")
    say(f"apt-get install {' '.join(recipe.apt_packages)} (in the chroot)")
    _chroot(
        root,
        ["apt-get", "install", "-y", "--no-install-recommends", *recipe.apt_packages],
        "apt-get install",
    )
    _chroot(root, ["apt-get", "clean"], "apt-get clean")
    _clear_dir(root / "var/lib/apt/lists")
    # Host-specific files debootstrap and apt leave behind; Docker provides its own.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (root / name).unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{tarball.name}.partial-{os.getpid()}"
    try:
        _run(
            ["tar", "--numeric-owner", "--one-file-system", "-cf", partial, "-C", root, "."],
            "caching the base tree",
        )
        partial.replace(tarball)
    finally:
        partial.unlink(missing_ok=True)
    say(f"cached the base tree as {tarball}")


def _clear_dir(path: Path, keep: frozenset[str] = frozenset()) -> None:
    if not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _install_python(root: Path, recipe: Recipe, wheels: Path, say: _Progress) -> None:
    """pip-installs the wheels inside the chroot with no index: it never reaches the network."""
    inside = root / WHEELS_IN_TREE.lstrip("/")
    shutil.copytree(wheels, inside)
    try:
        say(f"pip install (in the chroot, --no-index): {' '.join(recipe.python_packages)}")
        _chroot(
            root,
            [
                "python3", "-m", "pip", "install", "--no-index", "--find-links", WHEELS_IN_TREE,
                "--break-system-packages", "--no-cache-dir", "--root-user-action=ignore",
                "--disable-pip-version-check", "--no-warn-script-location",
                *recipe.python_packages,
            ],
            "pip install (chroot)",
        )  # fmt: skip
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    # Debian's marker makes `pip install` refuse to run; `%pip install` must work in notebooks.
    python = f"python{recipe.python_version}"
    (root / f"usr/lib/{python}/EXTERNALLY-MANAGED").unlink(missing_ok=True)


def _add_user(root: Path, recipe: Recipe, say: _Progress) -> None:
    say(f"adding user {recipe.user} ({recipe.uid}:{recipe.gid}, home {recipe.home})")
    _chroot(root, ["groupadd", "--gid", str(recipe.gid), recipe.user], "groupadd")
    _chroot(
        root,
        [
            "useradd", "--uid", str(recipe.uid), "--gid", str(recipe.gid), "--home-dir",
            recipe.home, "--create-home", "--shell", recipe.shell, recipe.user,
        ],
        "useradd",
    )  # fmt: skip
    _chroot(root, ["chown", "-R", f"{recipe.uid}:{recipe.gid}", recipe.home], "chown home")


def _install_kernelspec(root: Path, recipe: Recipe, say: _Progress) -> None:
    """Writes the kernelspec with the image's absolute python3 as argv[0].

    The one shipped in the ipykernel wheel says `python`, which Debian does not have and which
    jupyter_client would replace by the *manager's* interpreter.
    """
    say(f"installing the {recipe.kernelspec} kernelspec under {recipe.kernelspec_prefix}")
    _chroot(
        root,
        [
            "python3", "-m", "ipykernel", "install", "--prefix", recipe.kernelspec_prefix,
            "--name", recipe.kernelspec,
        ],
        "ipykernel install",
    )  # fmt: skip
    spec = root / recipe.kernelspec_dir.lstrip("/") / "kernel.json"
    if not spec.is_file():
        raise ImageBuildError(f"the kernelspec is missing after ipykernel install: {spec}")


def _finish_tree(root: Path) -> None:
    """Removes what must not ship: build-time leftovers and host-specific files."""
    for name in ("etc/resolv.conf", "etc/hostname"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / WHEELS_IN_TREE.lstrip("/"), ignore_errors=True)
    _clear_dir(root / "root/.cache")
    _clear_dir(root / "tmp")
    _clear_dir(root / "var/tmp")


def _import(
    client: docker.DockerClient, root: Path, tarball: Path, recipe: Recipe, say: _Progress
) -> str:
    """Tars the tree (numeric owners) and imports it into Docker; returns the image id."""
    say("packing the tree")
    _run(
        ["tar", "--numeric-owner", "--one-file-system", "-cf", tarball, "-C", root, "."],
        "packing the tree",
    )
    tag = image_tag(recipe)
    repository, _, version = tag.rpartition(":")
    say(f"docker import as {tag} ({tarball.stat().st_size / 1e6:.0f} MB)")
    try:
        answer = client.api.import_image(
            src=str(tarball), repository=repository, tag=version, changes=import_changes(recipe)
        )
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"docker import failed: {exc}") from exc
    for line in str(answer).splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise ImageBuildError(f"docker import failed: {message['error']}")
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound as exc:
        raise ImageBuildError(f"docker import did not produce {tag}: {answer}") from exc
    if (image.labels or {}).get(LABEL_RECIPE) != recipe_hash(recipe):
        raise ImageBuildError(f"{tag} was imported without its labels: {image.labels}")
    return str(image.id)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (deepest first), from /proc/self/mounts."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 2:
                continue
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Removes the build directory, unmounting first: rmtree would walk into a bind mount."""
    for _attempt in range(2):
        points = _mounts_under(path)
        if not points:
            break
        for point in points:
            result = subprocess.run(["umount", point], capture_output=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if _mounts_under(path):
        raise ImageBuildError(f"left {path} in place: it still has mounts {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def build_image(
    client: docker.DockerClient | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] = print,
    workdir: Path | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> str:
    """Builds the kernel image for `recipe` unless its tag is present; returns the tag.

    `force` rebuilds even when the tag is present (the replaced image is removed when nothing
    uses it). `workdir` is the parent of the temporary build directory (default /var/tmp: the
    tree is about 1 GB, too big for a tmpfs /tmp). Building needs root and debootstrap;
    finding the image present does not.
    """
    if client is not None:
        return _build_image(client, force, _Progress(progress), workdir, recipe)
    own_client = docker.from_env()
    try:
        return _build_image(own_client, force, _Progress(progress), workdir, recipe)
    finally:
        own_client.close()


def _build_image(
    client: docker.DockerClient,
    force: bool,
    say: _Progress,
    workdir: Path | None,
    recipe: Recipe,
) -> str:
    tag = image_tag(recipe)
    try:
        previous: str | None = str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        previous = None
    if previous is not None and not force:
        say(f"image {tag} is present ({previous[:19]}); nothing to build")
        return tag
    _check_host()
    arch = host_arch()
    say(f"building {tag} ({arch}, recipe {recipe_hash(recipe)[:12]})")
    wheels = _download_wheels(recipe, arch, say)
    # mkdtemp makes a private directory, so a shared parent is safe.
    parent = Path(workdir) if workdir is not None else Path("/var/tmp")  # noqa: S108
    parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="jupyter-sessions-build-", dir=parent))
    try:
        root = build / "rootfs"
        _make_base(root, recipe, arch, say)
        _install_python(root, recipe, wheels, say)
        _add_user(root, recipe, say)
        _install_kernelspec(root, recipe, say)
        _finish_tree(root)
        image_id = _import(client, root, build / "rootfs.tar", recipe, say)
    finally:
        _remove_tree(build)
    if previous is not None and previous != image_id:
        _drop_untagged(client, previous)
    size = client.images.get(image_id).attrs.get("Size", 0) / 1e6
    say(f"built {tag} ({image_id[:19]}, {size:.0f} MB) in {say.elapsed:.0f}s")
    return tag


def _drop_untagged(client: docker.DockerClient, image_id: str) -> None:
    """Removes the image a forced rebuild replaced, unless containers or other tags keep it."""
    # Still used by a container: Docker refuses, and keeps it, as it should.
    with contextlib.suppress(docker.errors.DockerException):
        if not client.images.get(image_id).tags:
            client.images.remove(image_id)


def main(argv: list[str] | None = None) -> int:
    """`python -m jupyter_sessions.images [--force]`: builds and prints the tag on stdout.

    Progress goes to stderr so that scripts can capture the tag alone.
    """
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_sessions.images",
        description="Build the default jupyter-sessions kernel image without a registry.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    parser.add_argument("--workdir", type=Path, help="parent of the build directory")
    args = parser.parse_args(argv)

    def report(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        tag = build_image(force=args.force, progress=report, workdir=args.workdir)
    except (ImageBuildError, docker.errors.DockerException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0
