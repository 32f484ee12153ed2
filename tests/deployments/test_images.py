"""The images' build contexts (deployments/images.py) and the Docker work pool's deployments
(deployments/prefect-docker.yaml), without Docker: what goes into a context and what a Docker
worker is told to run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.importtools import import_object

from deployments import images
from deployments.definitions import PREFECT_DOCKER_YAML, PREFECT_YAML, prefect_docker_yaml
from src.config import load_config
from tests.helpers.flows import BIN, PrefectServer
from tests.helpers.install import REPO_ROOT


def test_prefect_docker_yaml_is_rendered_from_the_definitions() -> None:
    assert PREFECT_DOCKER_YAML.read_text() == prefect_docker_yaml(load_config(environ={})), (
        "deployments/prefect-docker.yaml and deployments/definitions.py disagree: edit the module, "
        "then run `python -m deployments.definitions`"
    )


def test_the_docker_pool_runs_every_deployment_of_prefect_yaml_in_the_training_image() -> None:
    plain = yaml.safe_load(PREFECT_YAML.read_text())
    docker = yaml.safe_load(PREFECT_DOCKER_YAML.read_text())
    assert [d["name"] for d in docker["deployments"]] == [d["name"] for d in plain["deployments"]]
    workdir = re.search(r"(?m)^WORKDIR (\S+)", images_dockerfile("train")).group(1)  # type: ignore[union-attr]
    assert docker["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": workdir}}
    ]
    cfg = load_config(environ={})
    for ours, theirs in zip(docker["deployments"], plain["deployments"], strict=True):
        different = {"entrypoint", "work_pool"}
        assert {k: v for k, v in ours.items() if k not in different} == {
            k: v for k, v in theirs.items() if k not in different
        }  # parameters, schedules, limits, tags: the same deployment
        # A module path (the image holds the installed package, no checkout), the same flow.
        assert ours["entrypoint"].split(":")[0].count("/") == 0
        assert import_object(ours["entrypoint"]).name == import_object(theirs["entrypoint"]).name
        assert ours["work_pool"]["name"] == cfg.flow.docker_work_pool
        assert ours["work_pool"]["job_variables"]["image"] == images.default_tag(
            images.ROLES["train"]
        )


def images_dockerfile(role: str) -> str:
    return (images.DOCKERFILES / f"{role}.Dockerfile").read_text()


@pytest.mark.parametrize("role", sorted(images.ROLES))
def test_each_image_runs_as_a_non_root_user_and_takes_settings_from_the_environment(
    role: str,
) -> None:
    text = images_dockerfile(role)
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"(?m)^USER \$\{UID\}:\$\{UID\}$", final_stage)
    assert re.search(r"(?m)^ARG UID=(?!0\b)\d+$", final_stage)
    # Nothing secret is asked for at build time, and nothing of the build stage's files but
    # the virtualenv reaches the image.
    assert not re.search(r"(?mi)^(ARG|ENV)\b.*(KEY|SECRET|PASSWORD|TOKEN|TRACKING_URI)", text)
    assert re.findall(r"(?m)^COPY .*", final_stage) == ["COPY --from=build /opt/venv /opt/venv"]
    assert "--require-hashes" in text and "--no-index" in text


def test_the_serving_image_is_uvicorn_with_a_health_check_on_ready() -> None:
    text = images_dockerfile("serve")
    assert re.search(r'(?m)^CMD \["uvicorn", "src.api:app"\]$', text)
    assert re.search(r"(?ms)^HEALTHCHECK .*?/ready", text)
    assert images.ROLES["serve"].extras == ()  # the base dependencies: the serving lock only


def copy_configs(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    return root


def test_a_context_whose_configs_hold_a_secret_is_refused_in_one_line(tmp_path: Path) -> None:
    root = copy_configs(tmp_path)
    serve = root / "configs" / "serve.yaml"
    serve.write_text(serve.read_text().replace("api_key: null", "api_key: hunter2"))
    monitor = root / "configs" / "monitor.yaml"
    monitor.write_text(
        monitor.read_text().replace(
            "store_url: null", "store_url: postgresql+psycopg2://app:pw@db.internal/monitor"
        )
    )
    with pytest.raises(images.ImageError) as refused:
        images.write_context("serve", tmp_path / "context", root=root)
    message = str(refused.value)
    assert "\n" not in message and "hunter2" not in message and ":pw@" not in message
    assert "configs/serve.yaml: api_key" in message and "configs/monitor.yaml: store_url" in message
    assert not (tmp_path / "context").exists()


def test_the_shipped_configs_hold_no_secret() -> None:
    assert images.secrets_in_configs(REPO_ROOT / "configs") == []


REQUIREMENTS = """\
# a comment
numpy==2.4.6 ; sys_platform == 'linux' \\
    --hash=sha256:aa \\
    --hash=sha256:bb
    # via clothing-classifier
async-timeout==5.0.1 ; python_full_version < '3.11.3' and sys_platform == 'linux' \\
    --hash=sha256:cc
appnope==0.1.4 ; sys_platform == 'darwin' \\
    --hash=sha256:dd
tomli==2.2.1 ; python_full_version < '3.11' \\
    --hash=sha256:ee
pyyaml==6.0.4 \\
    --hash=sha256:ff
"""


def test_the_wheels_are_those_of_the_image_python_whatever_python_downloads_them() -> None:
    """A pin for early 3.11 patch releases (Debian 12 has 3.11.2) is downloaded even by a later
    Python here; one for macOS or an older Python is not."""
    kept = images.for_the_image(REQUIREMENTS, machine="x86_64").splitlines()
    assert [line.split(" ")[0] for line in kept] == [
        "numpy==2.4.6",
        "async-timeout==5.0.1",
        "pyyaml==6.0.4",
    ]
    assert kept[0] == "numpy==2.4.6 --hash=sha256:aa --hash=sha256:bb"
    assert all(" ; " not in line for line in kept)


def test_platform_tags_cover_every_manylinux_glibc_up_to_the_base_image() -> None:
    tags = images.platform_tags("aarch64")
    assert "manylinux_2_36_aarch64" in tags and "manylinux_2_17_aarch64" in tags
    assert "manylinux2014_aarch64" in tags and "manylinux_2_37_aarch64" not in tags


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_prefect_deploy_puts_the_flows_on_the_docker_pool_with_the_training_image(
    prefect_server: PrefectServer,
) -> None:
    """`prefect deploy --all` of prefect-docker.yaml on a real Prefect server (a Docker work pool
    needs no Docker where it is created), read back through Prefect's client."""
    env = {k: v for k, v in prefect_server.env.items() if k != "PROFILE"}
    cfg = load_config(environ={})
    pool = cfg.flow.docker_work_pool
    prefect = [str(BIN / "prefect")]
    for args in (
        ["work-pool", "create", pool, "--type", "docker", "--overwrite"],
        ["--no-prompt", "deploy", "--prefect-file", str(PREFECT_DOCKER_YAML), "--all"],
    ):
        done = subprocess.run(
            [*prefect, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    spec = yaml.safe_load(PREFECT_DOCKER_YAML.read_text())
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}),
        get_client(sync_client=True) as client,
    ):
        assert client.read_work_pool(pool).type == "docker"
        for entry in spec["deployments"]:
            flow = import_object(entry["entrypoint"]).name
            deployment = client.read_deployment_by_name(f"{flow}/{entry['name']}")
            assert deployment.work_pool_name == pool
            assert deployment.entrypoint == entry["entrypoint"]
            assert deployment.job_variables["image"] == images.default_tag(images.ROLES["train"])
            assert deployment.pull_steps == spec["pull"]
