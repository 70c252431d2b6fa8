"""`aoscore cloud publish NAME --image REF`: an image `docker build` made (Docker v2 manifest,
docker config, gzip layers, no index) published from the engine, a docker-archive, an OCI
layout and a registry; every URL the cloud hands out serves its digest; a unit runs it as
`docker run` would. Real engine, registry, skopeo, cloud and agent."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from aoscore_py.blobs import oci
from aoscore_py.cloud.desired import WantedItem, build_desired
from aoscore_py.cloud.oci import blob_urls, build_test_image, sha256_digest
from aoscore_py.cloud.registry import Registry
from aoscore_py.powercut.testbed import CloudProcess, aoscore_cmd, push, scenario, wait_converged
from aoscore_py.sm.docker_runtime import LABEL_ITEM, LABEL_UNIT, DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")
# What the container prints first: env, working dir and user, as the unit started it.
COMMAND = (
    'echo "greeting=$GREETING cwd=$(pwd) uid=$(id -u)"; '
    'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done'
)
DOCKERFILE = f"""FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "mkdir", "-p", "/srv/app", "/tmp"]
RUN ["/bin/busybox", "chown", "1000:1000", "/srv/app"]
ENV PATH=/bin GREETING=hello
WORKDIR /srv/app
USER 1000:1000
LABEL io.aoscore.test-build=MARK
HEALTHCHECK --interval=1s --retries=3 CMD test -d /srv/app
ENTRYPOINT ["/bin/sh", "-c"]
CMD [{orjson.dumps(COMMAND).decode()}]
"""
KEPT = ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Healthcheck")


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def _docker(*args: str) -> str:
    done = _run(["docker", *args])
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def _build(context: Path, tag: str, mark: str) -> dict[str, Any]:
    """`docker build` the busybox image as `tag`; its image config (`docker inspect`)."""
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, context / "busybox")  # with its mode: the build runs it
    (context / "Dockerfile").write_text(DOCKERFILE.replace("MARK", mark))
    _docker("build", "-q", "-t", tag, str(context))
    return dict(orjson.loads(_docker("inspect", "--format", "{{json .}}", tag)))


def _publish(cloud: CloudProcess, name: str, ref: str) -> subprocess.CompletedProcess[str]:
    where = ("--cloud-dir", str(cloud.cloud_dir), "--registry", cloud.registry_url)
    return _run(aoscore_cmd("cloud", "publish", name, "--image", ref, *where))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """An image `docker build` made; removed from the engine at the end."""
    tag = f"aoscore-it-publish:{uuid.uuid4().hex[:8]}"
    inspected = _build(tmp_path_factory.mktemp("build"), tag, "shared")
    yield tag, inspected
    _run(["docker", "rmi", tag])


@pytest.fixture
def sources(
    built: tuple[str, dict[str, Any]], registry: Registry, tmp_path: Path
) -> Iterator[Callable[[str], str]]:
    """Makes the built image available through one transport; returns its skopeo reference."""
    tag, _ = built
    pushed: list[str] = []

    def make(transport: str) -> str:
        if transport == "docker-daemon":
            return f"docker-daemon:{tag}"
        if transport == "docker-archive":
            archive = tmp_path / "image.tar"
            _docker("save", "-o", str(archive), tag)
            return f"docker-archive:{archive}"
        if transport == "oci":
            layout = tmp_path / "layout"
            done = _run(["skopeo", "copy", "--quiet", f"docker-daemon:{tag}", f"oci:{layout}:v1"])
            assert done.returncode == 0, done.stderr
            return f"oci:{layout}:v1"
        remote = f"{registry.url.removeprefix('http://')}/pushed-{uuid.uuid4().hex[:6]}:v1"
        _docker("tag", tag, remote)
        pushed.append(remote)
        _docker("push", remote)
        return f"docker://{remote}"

    yield make
    for remote in pushed:
        _run(["docker", "rmi", remote])


def _get(url: str) -> bytes:
    response = httpx.get(url, timeout=30, trust_env=False)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    return response.content


def _served(cloud: CloudProcess, digest: str) -> bytes:
    """The blob of `digest` through every URL the cloud hands out for it; each one serves
    exactly those bytes, and the catalog's size and extra hashes match them."""
    entry = cloud.state.catalog()[digest]
    bodies = {_get(url) for url in blob_urls(cloud.registry_url, entry, digest)}
    assert len(bodies) == 1, f"the URLs of {digest} serve different bytes"
    (body,) = bodies
    assert sha256_digest(body) == digest
    assert len(body) == entry["size"]
    assert hashlib.sha512(body).hexdigest() == entry["sha512"]
    return body


def _check_tree(cloud: CloudProcess, index_digest: str) -> list[dict[str, Any]]:
    """Walk the published image as a unit does, through the URLs only; the image configs."""
    index = oci.load_document(_served(cloud, index_digest))
    assert oci.is_index(index)
    configs = []
    for entry in index["manifests"]:
        manifest, config, layers = oci.parse_manifest(_served(cloud, entry["digest"]))
        assert entry["mediaType"] == manifest["mediaType"]
        configs.append(orjson.loads(_served(cloud, config)))
        for layer in layers:
            _served(cloud, layer)
        item_config = oci.item_config_digest(manifest)
        if item_config is not None:
            _served(cloud, item_config)
    return configs


@pytest.mark.parametrize("transport", ["docker-daemon", "docker-archive", "oci", "docker"])
def test_a_docker_built_image_is_served_with_its_config(
    transport: str,
    cloud: CloudProcess,
    built: tuple[str, dict[str, Any]],
    sources: Callable[[str], str],
) -> None:
    _, inspected = built
    name = f"pub-{transport}"
    done = _publish(cloud, name, sources(transport))
    assert done.returncode == 0, done.stderr

    index_digest = done.stdout.strip()
    index = orjson.loads(_served(cloud, index_digest))
    (entry,) = index["manifests"]
    assert entry["platform"] == {"architecture": inspected["Architecture"], "os": "linux"}
    wanted = {
        "oci": oci.OCI_MANIFEST_TYPE,
        "docker": oci.DOCKER_MANIFEST_TYPE,
        "docker-daemon": oci.DOCKER_MANIFEST_TYPE,
        "docker-archive": oci.DOCKER_MANIFEST_TYPE,
    }
    assert entry["mediaType"] == wanted[transport]
    (config,) = _check_tree(cloud, index_digest)
    expected = dict(inspected["Config"])
    if transport == "oci":
        # skopeo's copy into an OCI layout writes an OCI config, which has no healthcheck:
        # the layout never held it, so it cannot be published
        del expected["Healthcheck"]
    for key in KEPT:
        assert config["config"].get(key) == expected.get(key), key


def test_a_multi_platform_layout_keeps_every_platform_and_its_item_config(
    cloud: CloudProcess, tmp_path: Path
) -> None:
    image = build_test_image("multi", item_config={"runtimes": ["runc"]})
    arm_config = orjson.loads(image.blobs[image.config_digest]) | {"architecture": "arm64"}
    arm_config_raw = orjson.dumps(arm_config)
    arm_manifest = orjson.dumps(
        image.manifest
        | {
            "config": image.manifest["config"]
            | {"digest": sha256_digest(arm_config_raw), "size": len(arm_config_raw)}
        }
    )
    platforms = [(image.blobs[image.manifest_digest], "amd64"), (arm_manifest, "arm64")]
    index = orjson.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST_TYPE,
                    "digest": sha256_digest(raw),
                    "size": len(raw),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for raw, arch in platforms
            ],
        }
    )
    layout = tmp_path / "layout"
    blobs = {**image.blobs, sha256_digest(arm_config_raw): arm_config_raw}
    blobs |= {sha256_digest(arm_manifest): arm_manifest, sha256_digest(index): index}
    for digest, data in blobs.items():
        path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    top = {
        "mediaType": oci.OCI_INDEX_TYPE,
        "digest": sha256_digest(index),
        "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }
    (layout / "index.json").write_bytes(orjson.dumps({"schemaVersion": 2, "manifests": [top]}))

    done = _publish(cloud, "pub-multi", f"oci:{layout}:multi")
    assert done.returncode == 0, done.stderr

    assert done.stdout.strip() == sha256_digest(index), "an index is published as it is"
    configs = _check_tree(cloud, sha256_digest(index))
    assert [c["architecture"] for c in configs] == ["amd64", "arm64"]


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("docker-daemon:aoscore-no-such-image:1", "reference does not exist"),
        ("docker-archive:/nonexistent/image.tar", "no such file"),
        ("registry.example/image:1", "use docker-daemon:IMAGE"),
    ],
)
def test_a_missing_image_or_bad_reference_exits_2_naming_it(
    cloud: CloudProcess, ref: str, words: str
) -> None:
    done = _publish(cloud, "pub-missing", ref)
    assert done.returncode == 2, done.stderr
    assert ref in done.stderr and words in done.stderr, done.stderr


@pytest.fixture
def own_image(tmp_path: Path) -> Iterator[Callable[[], tuple[str, dict[str, Any]]]]:
    """Builds an image no other test shares (its own label, so its own id); the image is
    removed after, with the tag the unit gave it when it loaded it."""
    made: list[str] = []

    def build() -> tuple[str, dict[str, Any]]:
        mark = uuid.uuid4().hex[:8]
        tag = f"aoscore-it-run:{mark}"
        inspected = _build(tmp_path / "build", tag, mark)
        made.append(str(inspected["Id"]))
        return tag, inspected

    yield build
    for image_id in made:
        _run(["docker", "rmi", "--force", image_id])


def _docker_list(registry: Registry, tag: str) -> str:
    """`docker push` the image to the loopback registry and make a Docker manifest list of it
    there (`docker manifest`); the list's reference, with the pushed tag removed locally."""
    host = registry.url.removeprefix("http://")
    pushed, listed = f"{host}/run-single:{tag.split(':')[1]}", f"{host}/run-list:v1"
    _docker("tag", tag, pushed)
    _docker("push", pushed)
    _docker("manifest", "create", "--insecure", listed, pushed)
    _docker("manifest", "push", "--insecure", "--purge", listed)
    _docker("rmi", pushed)
    return f"docker://{listed}"


@pytest.mark.parametrize("shape", ["manifest", "list"])
def test_a_unit_runs_the_docker_built_image_as_docker_run_would(
    shape: str,
    own_image: Callable[[], tuple[str, dict[str, Any]]],
    agents: Agents,
    cloud: CloudProcess,
    registry: Registry,
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    """A single Docker v2 manifest (wrapped in an OCI index by the cloud), or a Docker manifest
    list (published as it is); either way the unit builds the image from the blobs it
    downloads and runs it with the config `docker build` made."""
    tag, inspected = own_image()
    ref = f"docker-daemon:{tag}" if shape == "manifest" else _docker_list(registry, tag)
    done = _publish(cloud, f"pub-run-{shape}", ref)
    assert done.returncode == 0, done.stderr
    _docker("rmi", tag)  # the unit must build the image from the blobs it downloads
    index_digest = done.stdout.strip()
    index = oci.load_document(_served(cloud, index_digest))
    media_type = oci.OCI_INDEX_TYPE if shape == "manifest" else oci.DOCKER_LIST_TYPE
    assert index["mediaType"] == media_type
    assert [m["mediaType"] for m in index["manifests"]] == [oci.DOCKER_MANIFEST_TYPE]
    wanted = build_desired([WantedItem("svc-docker", index_digest)], nodes=("node-1",))
    ds = replace(scenario([]), items=wanted.items, instances=wanted.instances)

    _, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    answer = push(cloud, unit, ds)
    assert answer["ok"], answer
    result = wait_converged(unit, ds, cloud, data_dir, docker_runtime)
    assert result.ok, result.problems

    (container,) = docker_runtime.list_containers({LABEL_UNIT: unit, LABEL_ITEM: "svc-docker"})
    seen = orjson.loads(_docker("inspect", "--format", "{{json .}}", container.id))
    assert seen["Image"] == inspected["Id"], "the image id is the docker-built config's digest"
    for key in KEPT:
        assert seen["Config"].get(key) == inspected["Config"].get(key), key
    assert seen["State"]["Health"]["Status"] == "healthy"
    output = _docker("logs", container.id)
    assert "greeting=hello cwd=/srv/app uid=1000" in output, output
