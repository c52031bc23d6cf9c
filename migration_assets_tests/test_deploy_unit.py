"""deploy/: the instance configs validate against Dagster's schema, and the pieces agree.

Validation goes as far as it can without a database: Dagster's own loader checks the
instance schema (`InstanceRef.from_dir`), then every configured class's config is
processed against that class's schema exactly as `ConfigurableClassData.rehydrate` does,
without constructing it (constructing the PostgreSQL storage would connect). The Docker run
launcher is not installed here (it is the `deploy-docker` extra), so its config is checked
for shape and for agreement with docker-compose.yaml instead.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import PoolGranularity
from dagster._core.instance.ref import InstanceRef
from dagster._serdes.config_class import ConfigurableClassData
from dagster_shared.yaml_utils import load_yaml_from_path

from migration_assets.settings import SETTING_NAMES

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
STORAGE_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_HOST": "storage.invalid",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_PORT": "5432",
}
# Set by the image itself (deploy/docker/Dockerfile ENV), not passed per run.
BAKED_INTO_IMAGE = {
    "DAGSTER_HOME",
    "MIGRATION_PLAN",
    "SUPABASE_SSLROOTCERT",
    "MIGRATION_ALEMBIC_CONFIG",
    "MIGRATION_PG_BIN",
}
# Given inside SOURCE_DATABASE_URL (`sslrootcert=/config/…`) on Docker, where a name passed
# to run containers must always be set, and an empty path is not a file.
IN_THE_SOURCE_URL = {"SOURCE_SSLROOTCERT"}
DOCKER_LAUNCHER_KEYS = {"image", "registry", "env_vars", "network", "networks", "container_kwargs"}
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CONFIG_MOUNT = "/config"  # where the plan and the CA arrive at run time, read-only
MOUNTED = ("MIGRATION_PLAN", "SUPABASE_SSLROOTCERT")  # the image's settings that name them
# Each image's run launcher: the Dockerfile's LAUNCHER build arg, the extra it installs, the
# package and the module that the instance's run_launcher names.
LAUNCHERS = {
    "docker": ("deploy-docker", "dagster-docker", "dagster_docker"),
    "k8s": ("deploy-k8s", "dagster-k8s", "dagster_k8s"),
}


def _load(path: Path) -> dict[str, Any]:
    loaded = load_yaml_from_path(str(path))  # a safe loader, as Dagster reads dagster.yaml
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _class_data(ref: InstanceRef) -> dict[str, ConfigurableClassData]:
    fields = {
        "storage": ref.storage_data,
        "run_coordinator": ref.run_coordinator_data,
        "run_launcher": ref.run_launcher_data,
        "compute_logs": ref.compute_logs_data,
        "local_artifact_storage": ref.local_artifact_storage_data,
        "scheduler": ref.scheduler_data,
    }
    return {name: data for name, data in fields.items() if data is not None}


def _check_class_config(data: ConfigurableClassData) -> None:
    """What `rehydrate` does before it constructs the class: import it, process its config."""
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
    assert result.success, f"{data.class_name}: {[e.message for e in result.errors or []]}"


def _validated_ref(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, skip: set[str]
) -> InstanceRef:
    for name, value in STORAGE_ENV.items():
        monkeypatch.setenv(name, value)
    ref = InstanceRef.from_dir(
        str(tmp_path), config_dir=str(config.parent), config_filename=config.name
    )
    for name, data in _class_data(ref).items():
        if name not in skip:
            _check_class_config(data)
    return ref


def _assert_production_settings(ref: InstanceRef) -> None:
    settings: dict[str, Any] = dict(ref.settings)
    assert ref.run_coordinator_data is not None
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.storage_data is not None
    assert ref.storage_data.class_name == "DagsterPostgresStorage"
    assert ref.storage_data.config_dict["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert ref.compute_logs_data.class_name == "NoOpComputeLogManager"
    monitoring = settings["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_resume_run_attempts"] == 0
    assert monitoring["free_slots_after_run_end_seconds"] > 0
    retries = settings["run_retries"]
    assert retries["enabled"] is True
    assert 0 < retries["max_retries"] <= 3
    assert retries["retry_on_asset_or_op_failure"] is False
    pools = settings["concurrency"]["pools"]
    assert PoolGranularity(pools["granularity"]) is PoolGranularity.OP
    assert pools["default_limit"] >= 1
    assert settings["telemetry"] == {"enabled": False}
    assert settings["nux"] == {"enabled": False}


def test_production_instance_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _validated_ref(DEPLOY / "dagster.yaml", tmp_path, monkeypatch, skip=set())
    _assert_production_settings(ref)
    assert ref.run_launcher_data is None or ref.run_launcher_data.class_name == (
        "DefaultRunLauncher"
    )


def test_instance_config_fails_without_storage_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation really resolves the storage's env vars (so it checks something)."""
    for name, value in STORAGE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_HOST")
    config = DEPLOY / "dagster.yaml"
    ref = InstanceRef.from_dir(
        str(tmp_path), config_dir=str(config.parent), config_filename=config.name
    )
    assert ref.storage_data is not None
    with pytest.raises(AssertionError, match="DAGSTER_PG_HOST"):
        _check_class_config(ref.storage_data)


def test_docker_instance_validates_and_matches_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _validated_ref(
        DEPLOY / "docker" / "dagster.yaml", tmp_path, monkeypatch, skip={"run_launcher"}
    )
    _assert_production_settings(ref)
    launcher = ref.run_launcher_data
    assert launcher is not None
    assert (launcher.module_name, launcher.class_name) == ("dagster_docker", "DockerRunLauncher")
    assert set(launcher.config_dict) <= DOCKER_LAUNCHER_KEYS
    production = _load(DEPLOY / "dagster.yaml")
    docker = _load(DEPLOY / "docker" / "dagster.yaml")
    for section in ("storage", "run_coordinator", "concurrency", "run_monitoring", "run_retries"):
        assert docker[section] == production[section], f"{section} differs from deploy/"


def test_docker_runs_get_every_setting() -> None:
    """Each run container gets every setting, and the daemon has each name it passes on."""
    launcher = _load(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]["config"]
    passed = set(launcher["env_vars"])
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    wanted = {*SETTING_NAMES, *STORAGE_ENV}
    missing = {n for n in wanted - passed if not (n in BAKED_INTO_IMAGE and n in dockerfile)}
    missing -= IN_THE_SOURCE_URL
    assert not missing, f"run containers would lack {sorted(missing)}"
    compose = _load(DEPLOY / "docker" / "docker-compose.yaml")
    daemon_env = set(compose["services"]["daemon"]["environment"])
    code_env = set(compose["services"]["user_code"]["environment"])
    assert passed <= daemon_env, f"unset in the daemon: {sorted(passed - daemon_env)}"
    assert passed <= code_env, f"unset in the code server: {sorted(passed - code_env)}"


def test_docker_compose_pieces_agree() -> None:
    compose = _load(DEPLOY / "docker" / "docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {"dagster_postgres", "user_code", "webserver", "daemon"}
    code = services["user_code"]
    assert "migration_assets.definitions" in code["command"]
    assert code["environment"]["DAGSTER_CURRENT_IMAGE"] == code["image"]
    assert {services[s]["image"] for s in ("webserver", "daemon")} == {code["image"]}
    port = code["command"][code["command"].index("--port") + 1]
    grpc = _load(DEPLOY / "docker" / "workspace.yaml")["load_from"][0]["grpc_server"]
    assert (grpc["host"], str(grpc["port"])) == ("user_code", port)
    launcher = _load(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]["config"]
    assert compose["networks"]["migration"]["name"] == launcher["network"]
    assert "127.0.0.1:" in services["webserver"]["ports"][0]  # the UI has no login


def _inline_secrets(values: dict[str, Any]) -> list[str]:
    env: dict[str, str] = {}
    for deployment in values["dagster-user-deployments"]["deployments"]:
        env.update(deployment.get("env") or {})
    words = ("URL", "PASSWORD", "SECRET", "KEY")
    return [name for name in env if any(w in name.upper() for w in words)]


def test_helm_values() -> None:
    values = _load(DEPLOY / "k8s" / "values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runMonitoring"]["enabled"] is True
    assert daemon["runMonitoring"]["maxResumeRunAttempts"] == 0
    assert daemon["runRetries"]["retryOnAssetOrOpFailure"] is False
    pools = values["concurrency"]["pools"]
    assert pools["granularity"] == "op"
    production = _load(DEPLOY / "dagster.yaml")["concurrency"]["pools"]
    assert pools["defaultLimit"] == production["default_limit"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert "migration_assets.definitions" in deployment["dagsterApiGrpcArgs"]
    assert deployment["envSecrets"], "settings must come from a Secret"
    assert not _inline_secrets(values), "secrets belong in a Kubernetes Secret"
    assert values["computeLogManager"]["type"] == "NoOpComputeLogManager"
    assert values["telemetry"]["enabled"] is False


def test_the_code_location_passes_dagsters_own_validation(tmp_path: Path) -> None:
    """What `dagster dev -w workspace.yaml` loads, loaded by Dagster's validator: one
    Definitions object at module scope, jobs and assets that resolve (the shipped plan)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MIGRATION_PLAN"}
    env["DAGSTER_HOME"] = str(tmp_path)
    dagster = Path(sys.executable).parent / "dagster"
    root = DEPLOY.parent
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(root / "workspace.yaml")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful for code location migration_assets" in done.stderr + done.stdout


# ------------------------------------------------------------------ the image and its mounts


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    joined: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, f"{dockerfile} ends inside a continued line"
    return [(word.upper(), rest.strip()) for word, _, rest in (j.partition(" ") for j in joined)]


def _copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context (not from a stage)."""
    found = []
    for instruction, args in _instructions(dockerfile):
        if instruction not in {"COPY", "ADD"}:
            continue
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if not any(f.startswith("--from=") for f in flags):
            found.append((paths[:-1], paths[-1]))
    return found


def _image_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in _instructions(dockerfile):
        for word in shlex.split(args) if instruction == "ENV" else []:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def _tracked() -> list[str]:
    """The files of a clean checkout of this commit's tree: what `git ls-files` lists."""
    listed = subprocess.run(
        ["git", "-C", str(DEPLOY.parent), "ls-files", "-z"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [name for name in listed.split("\0") if name]


def _ignored_by_the_build(path: str) -> bool:
    """Dockerfile.dockerignore's plain patterns (a name or a directory), as BuildKit reads them."""
    patterns = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    names = [p.strip().removeprefix("**/") for p in patterns if p.strip() and p[0] != "#"]
    return any(part == name for name in names for part in Path(path).parts)


def test_every_dockerfile_copy_comes_from_a_clean_checkout() -> None:
    """No plan, no certificate, no build-arg file: a checkout builds the image as it is."""
    tracked = _tracked()
    copies = _copies(DOCKERFILE)
    assert copies, "the Dockerfile copies nothing from the checkout"
    for sources, dest in copies:
        for source in sources:
            assert "$" not in source, f"COPY {source}: a build arg may name a file no checkout has"
            here = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
            assert here, f"COPY {source} {dest}: not in a clean checkout (git ls-files)"
            assert not _ignored_by_the_build(source), f"COPY {source}: the .dockerignore drops it"
        assert not dest.startswith(CONFIG_MOUNT), f"COPY into {dest}: that is the mount's place"


def test_what_the_image_lacks_is_mounted_read_only_wherever_code_runs() -> None:
    """The image names the plan and the CA under /config; compose mounts them in the code
    location, the Docker run launcher in each run container, the Helm values in both."""
    env = _image_env(DOCKERFILE)
    for name in MOUNTED:
        assert env[name].startswith(CONFIG_MOUNT + "/"), f"{name}={env[name]}: not the mount"
    compose = _load(DEPLOY / "docker" / "docker-compose.yaml")
    code = compose["services"]["user_code"]
    volume, target, mode = next(v for v in code["volumes"] if ":" + CONFIG_MOUNT in v).split(":")
    assert (target, mode) == (CONFIG_MOUNT, "ro"), code["volumes"]
    declared = compose["volumes"][volume]
    assert declared["driver_opts"]["device"].startswith("${MIGRATION_CONFIG_DIR:?"), declared
    launcher = _load(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]["config"]
    runs = launcher["container_kwargs"]["volumes"]
    assert f"{declared['name']}:{CONFIG_MOUNT}:ro" in runs, f"run containers lack it: {runs}"

    (deployment,) = _load(DEPLOY / "k8s" / "values.yaml")["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True  # run pods get the same
    (mount,) = [m for m in deployment["volumeMounts"] if m["mountPath"] == CONFIG_MOUNT]
    assert mount["readOnly"] is True, mount
    (source,) = [v for v in deployment["volumes"] if v["name"] == mount["name"]]
    assert {"configMap", "secret"} & set(source), source


def _extras() -> dict[str, list[str]]:
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    extras: dict[str, list[str]] = pyproject["project"]["optional-dependencies"]
    return extras


def _pinned(requirements: list[str], package: str) -> str:
    """The exact version `package` is pinned to in `requirements`."""
    pins = [r.split("==", 1)[1] for r in requirements if re.fullmatch(rf"{package}==[\w.]+", r)]
    assert len(pins) == 1, f"{package} is not pinned exactly once in {requirements}"
    return pins[0]


def test_each_image_carries_the_run_launcher_its_instance_names() -> None:
    """compose's image is built with the Docker launcher, the Helm values' with dagster-k8s:
    the image's tag says which, the build arg installs that extra, pinned with Dagster."""
    instructions = _instructions(DOCKERFILE)
    assert "LAUNCHER" in [a.split("=")[0] for i, a in instructions if i == "ARG"]
    (install,) = [a for i, a in instructions if i == "RUN" and "[deploy-${LAUNCHER}]" in a]
    accepted = re.search(r'case "\$LAUNCHER" in ([\w|]+)\)', install)
    assert accepted, "the build does not refuse a LAUNCHER it has no extra for"
    assert set(accepted.group(1).split("|")) == set(LAUNCHERS)
    extras = _extras()
    dependencies = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    release = _pinned(dependencies["dependencies"], "dagster-postgres")  # the libraries' line

    compose = _load(DEPLOY / "docker" / "docker-compose.yaml")["services"]["user_code"]
    values = _load(DEPLOY / "k8s" / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    docker_module = _load(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]["module"]
    images = {
        "docker": (compose["build"]["args"]["LAUNCHER"], compose["image"].split(":")[1]),
        "k8s": ("k8s", deployment["image"]["tag"]),
    }
    modules = {"docker": docker_module, "k8s": "dagster_k8s"}
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    for launcher, (build_arg, tag) in images.items():
        extra, package, module = LAUNCHERS[launcher]
        assert build_arg == launcher, f"the {launcher} image is built with LAUNCHER={build_arg}"
        assert tag.split("-")[0] == launcher, f"tag {tag} does not say it carries {package}"
        assert _pinned(extras[extra], package) == release, f"{extra}: {extras[extra]}"
        assert modules[launcher] == module
