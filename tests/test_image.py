"""Tests of the default kernel image: its recipe tag, its content, and a real kernel in it.

The image is built once per test session (or reused when its tag is present); a cold build
takes a minute or two and needs root, debootstrap and a Docker engine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import secrets
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.models.containers
import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from jupyter_sessions.images import (
    DEFAULT_RECIPE,
    LABEL_KERNELSPEC,
    LABEL_RECIPE,
    LABEL_SERVICES,
    build_image,
    image_labels,
    image_tag,
    import_changes,
    recipe_hash,
    services_json,
)

#: Generous: the session fixture's cold build runs inside the first test's setup.
BUILD_TIMEOUT = 1800

DOCKERFILE = Path(__file__).parent.parent / "jupyter_sessions" / "images" / "Dockerfile"

#: Straight to the published loopback ports, whatever proxy the environment configures.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

KERNEL_PORTS = {"shell": 5000, "iopub": 5001, "stdin": 5002, "control": 5003, "hb": 5004}


@pytest.fixture(scope="session")
def docker_api() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kernel_image(docker_api: docker.DockerClient) -> str:
    """The default image's tag, built now unless present."""
    return build_image(docker_api)


def run(client: docker.DockerClient, image: str, command: list[str], **kwargs: Any) -> str:
    """Runs a command in a throwaway container and returns its standard output.

    Waits for the exit before reading the log once: following the log of a container that exits
    at once (what `containers.run` does) can hand back garbled output on this engine.
    """
    container = client.containers.create(image, command, **kwargs)
    try:
        container.start()
        status = container.wait(timeout=120)
        output: bytes = container.logs(stdout=True, stderr=False)
        assert status["StatusCode"] == 0, (command, container.logs().decode())
    finally:
        container.remove(force=True)
    return output.decode().strip()


# --- the recipe and its tag (no Docker needed) ---------------------------------------------


def test_image_tag_is_deterministic() -> None:
    tag = image_tag()
    assert tag == image_tag(DEFAULT_RECIPE) == image_tag(dataclasses.replace(DEFAULT_RECIPE))
    assert re.fullmatch(r"jupyter-sessions/kernel:[0-9a-f]{12}", tag)
    assert tag.endswith(recipe_hash()[:12])
    assert len(recipe_hash()) == 64


def test_image_tag_changes_with_the_recipe() -> None:
    bumped = dataclasses.replace(
        DEFAULT_RECIPE,
        python_packages=(*DEFAULT_RECIPE.python_packages[:-1], "matplotlib==3.10.9"),
    )
    more_apt = dataclasses.replace(
        DEFAULT_RECIPE, apt_packages=(*DEFAULT_RECIPE.apt_packages, "git")
    )
    other_services = dataclasses.replace(DEFAULT_RECIPE, services=[])
    hashes = {recipe_hash(r) for r in (DEFAULT_RECIPE, bumped, more_apt, other_services)}
    assert len(hashes) == 4
    assert image_tag(bumped) != image_tag()
    assert DEFAULT_RECIPE.python_packages[-1] == "matplotlib==3.11.2"  # the copy left it alone


def test_recipe_pins_every_top_level_package() -> None:
    names = [p.split("==")[0] for p in DEFAULT_RECIPE.python_packages]
    assert names == [
        "ipykernel",
        "ipywidgets",
        "jupyterlab",
        "notebook",
        "numpy",
        "pandas",
        "matplotlib",
    ]
    assert all(re.fullmatch(r"[\w-]+==\d+(\.\d+)+", p) for p in DEFAULT_RECIPE.python_packages)
    assert "ipywidgets==8." in " ".join(DEFAULT_RECIPE.python_packages)


def test_dockerfile_matches_the_recipe() -> None:
    text = DOCKERFILE.read_text()
    recipe = DEFAULT_RECIPE
    assert "FROM ${BASE}" in text and "ARG BASE=debian:bookworm-slim" in text
    assert " ".join(recipe.apt_packages) in text
    for pin in recipe.python_packages:
        assert re.search(rf"^\s+{re.escape(pin)} \\$", text, re.M), pin
    assert f"rm -f /usr/lib/python{recipe.python_version}/EXTERNALLY-MANAGED" in text
    assert f"--uid {recipe.uid} --gid {recipe.gid} --home-dir {recipe.home}" in text
    assert f"{LABEL_SERVICES}={json.dumps(services_json())}" in text
    assert f'{LABEL_KERNELSPEC}="{recipe.kernelspec}"' in text
    assert f'{LABEL_RECIPE}="${{RECIPE_HASH}}"' in text
    # USER, WORKDIR, ENV and CMD as `docker import` applies them.
    for change in import_changes():
        if not change.startswith("LABEL "):
            assert re.search(rf"^{re.escape(change)}$", text, re.M), change


# --- the built image ------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_build_returns_the_recipe_tag(kernel_image: str, docker_api: docker.DockerClient) -> None:
    assert kernel_image == image_tag()
    assert docker_api.images.get(kernel_image).labels[LABEL_RECIPE] == recipe_hash()


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_second_build_reuses_the_image(kernel_image: str, docker_api: docker.DockerClient) -> None:
    before = docker_api.images.get(kernel_image).id
    messages: list[str] = []
    started = time.monotonic()
    assert build_image(docker_api, progress=messages.append) == kernel_image
    assert time.monotonic() - started < 10
    assert len(messages) == 1 and "is present" in messages[0], messages
    assert docker_api.images.get(kernel_image).id == before


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_runs_as_work_user_by_default(kernel_image: str, docker_api: docker.DockerClient) -> None:
    assert run(docker_api, kernel_image, ["id", "-u"]) == "1000"
    assert run(docker_api, kernel_image, ["id", "-g"]) == "1000"
    assert run(docker_api, kernel_image, ["id", "-un"]) == "work"
    assert run(docker_api, kernel_image, ["pwd"]) == "/home/work"
    assert run(docker_api, kernel_image, ["getent", "passwd", "work"]) == (
        "work:x:1000:1000::/home/work:/bin/bash"
    )


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_python_packages_import(kernel_image: str, docker_api: docker.DockerClient) -> None:
    code = "import ipykernel, ipywidgets, jupyterlab, numpy, pandas, matplotlib; print('ok')"
    assert run(docker_api, kernel_image, ["python3", "-c", code]) == "ok"
    versions = json.loads(
        run(
            docker_api,
            kernel_image,
            [
                "python3",
                "-c",
                "import json, importlib.metadata as m; "
                "print(json.dumps({d.metadata['Name'].lower(): d.version "
                "for d in m.distributions()}))",
            ],
        )
    )
    for pin in DEFAULT_RECIPE.python_packages:
        name, version = pin.split("==")
        assert versions[name] == version, pin


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_home_is_owned_by_work(kernel_image: str, docker_api: docker.DockerClient) -> None:
    assert run(docker_api, kernel_image, ["stat", "-c", "%u:%g %a", "/home/work"]) == (
        "1000:1000 755"
    )
    assert run(docker_api, kernel_image, ["touch", "/home/work/written"], user="1000") == ""


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_pip_is_not_externally_managed(kernel_image: str, docker_api: docker.DockerClient) -> None:
    code = "import glob; print(glob.glob('/usr/lib/python3*/EXTERNALLY-MANAGED'))"
    assert run(docker_api, kernel_image, ["python3", "-c", code]) == "[]"
    assert run(docker_api, kernel_image, ["python3", "-m", "pip", "--version"]).startswith("pip ")


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_kernelspec_is_installed(kernel_image: str, docker_api: docker.DockerClient) -> None:
    spec = json.loads(
        run(docker_api, kernel_image, ["cat", f"{DEFAULT_RECIPE.kernelspec_dir}/kernel.json"])
    )
    assert spec["argv"][0] == "/usr/bin/python3"
    assert spec["argv"][-2:] == ["-f", "{connection_file}"]
    assert spec["language"] == "python"
    listed = json.loads(run(docker_api, kernel_image, ["jupyter", "kernelspec", "list", "--json"]))
    assert listed["kernelspecs"]["python3"]["resource_dir"] == DEFAULT_RECIPE.kernelspec_dir


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_labels_and_config(kernel_image: str, docker_api: docker.DockerClient) -> None:
    image = docker_api.images.get(kernel_image)
    labels = image.labels
    assert {k: labels.get(k) for k in image_labels()} == image_labels()
    assert labels[LABEL_RECIPE] == recipe_hash()
    assert labels[LABEL_KERNELSPEC] == "python3"
    services = json.loads(labels[LABEL_SERVICES])
    assert isinstance(services, list) and all(isinstance(s, dict) for s in services)
    jupyter = next(s for s in services if s["name"] == "jupyter")
    assert jupyter["protocol"] == "http" and jupyter["port"] == 8888
    assert "--port={port}" in jupyter["command"]
    assert "--ServerApp.base_url={base_url}" in jupyter["command"]
    config = image.attrs["Config"]
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/home/work"
    assert config["Cmd"] == ["python3", "-m", "ipykernel_launcher", "-f", "/tmp/connection.json"]
    assert {"HOME=/home/work", "LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin"} <= set(
        config["Env"]
    )


def _connection_tar(info: dict[str, Any]) -> bytes:
    """A tar holding connection.json owned by 1000:1000, mode 0600, for put_archive."""
    data = json.dumps(info).encode()
    entry = tarfile.TarInfo("connection.json")
    entry.size, entry.mode, entry.uid, entry.gid = len(data), 0o600, 1000, 1000
    entry.mtime = int(time.time())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def _host_port(container: docker.models.containers.Container, port: int) -> int:
    return int(container.ports[f"{port}/tcp"][0]["HostPort"])


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_kernel_runs_in_the_image(kernel_image: str, docker_api: docker.DockerClient) -> None:
    key = secrets.token_hex(32)
    info: dict[str, Any] = {f"{name}_port": port for name, port in KERNEL_PORTS.items()}
    info |= {
        "ip": "0.0.0.0",
        "transport": "tcp",
        "key": key,
        "signature_scheme": "hmac-sha256",
        "kernel_name": "python3",
    }
    container = docker_api.containers.create(
        kernel_image,
        ports={f"{port}/tcp": ("127.0.0.1", None) for port in KERNEL_PORTS.values()},
    )
    client = BlockingKernelClient()
    try:
        assert container.put_archive("/tmp", _connection_tar(info))
        container.start()
        container.reload()
        published: dict[str, Any] = {
            f"{name}_port": _host_port(container, port) for name, port in KERNEL_PORTS.items()
        }
        published |= {"ip": "127.0.0.1", "transport": "tcp", "key": key}
        published["signature_scheme"] = "hmac-sha256"
        client.load_connection_info(published)  # type: ignore[arg-type]
        client.start_channels()
        client.wait_for_ready(timeout=60)
        output: list[str] = []

        def on_output(msg: dict[str, Any]) -> None:
            if msg["header"]["msg_type"] == "stream":
                output.append(msg["content"]["text"])

        reply = client.execute_interactive("print(6*7)", timeout=30, output_hook=on_output)
        assert reply["content"]["status"] == "ok"
        assert "".join(output).strip() == "42"
        who = container.exec_run(["stat", "-c", "%u %a", "/tmp/connection.json"])
        assert who.output.decode().strip() == "1000 600"
    finally:
        client.stop_channels()
        container.remove(force=True)


@pytest.mark.docker
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_jupyter_service_serves_terminals(
    kernel_image: str, docker_api: docker.DockerClient
) -> None:
    """The label's `jupyter` command starts JupyterLab with the terminals API."""
    service = next(s for s in json.loads(services_json()) if s["name"] == "jupyter")
    port, base_url = service["port"], "/jsess/test/"
    command = [arg.format(port=port, base_url=base_url) for arg in service["command"]]
    container = docker_api.containers.run(
        kernel_image, command, detach=True, ports={f"{port}/tcp": ("127.0.0.1", None)}
    )
    try:
        container.reload()
        url = f"http://127.0.0.1:{_host_port(container, port)}{base_url}api/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with DIRECT.open(url + "status", timeout=5) as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(container.logs().decode()[-2000:]) from exc
                time.sleep(0.5)
        with DIRECT.open(url + "terminals", timeout=5) as response:
            assert json.loads(response.read()) == []
    finally:
        container.remove(force=True)
