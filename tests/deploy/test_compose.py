"""docker-compose.yml and the Dockerfiles, checked without Docker: every command names a real
entry point of the project, the worker is the one app/jobs/embedded_worker.py starts, app and
workers share DATA_DIR / REDIS_URL / DATABASE_URL, workers scale with a GPU reservation, and the
images contain every file their commands run. `docker compose config` runs too where a
Docker client with the compose plugin exists (not on the machines these tests usually run on).
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from app.jobs.embedded_worker import worker_command
from tests.deploy.entry_points import (REPO_ROOT, THIRD_PARTY_PROGRAMS, check_entry_point, dockerfile_argvs,
                                       dockerignore_patterns, dockerignored, parse_celery, repo_path, service_argvs)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILES = {"app": REPO_ROOT / "Dockerfile", "worker": REPO_ROOT / "docker" / "worker.Dockerfile"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def test_services_profiles_and_healthchecks(services):
    assert set(services) == {"redis", "app", "worker", "postgres", "flower"}
    assert services["postgres"]["profiles"] == ["postgres"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert not any("profiles" in services[name] for name in ("redis", "app", "worker"))  # the default stack
    for name in ("redis", "app", "worker", "postgres"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    assert services["app"]["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    assert services["worker"]["depends_on"]["app"]["condition"] == "service_healthy"  # the app migrates first


def test_every_command_names_a_real_entry_point(services):
    resolved = {}
    for name, service in services.items():
        argvs = service_argvs(service)
        if "build" in service:
            dockerfile = REPO_ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile == DOCKERFILES[name] and dockerfile.is_file()
            for where, argv in argvs:
                resolved[f"{name} {where}"] = check_entry_point(argv)
        else:
            image = service["image"].split(":")[0]
            for where, argv in argvs:
                assert argv[0] in THIRD_PARTY_PROGRAMS[image], f"{name} {where}: {argv[0]} is not a program of {image}"
    for name, dockerfile in DOCKERFILES.items():
        for instruction, argv in dockerfile_argvs(dockerfile):
            resolved[f"{dockerfile.name} {instruction}"] = check_entry_point(argv)
    assert resolved == {
        "app command": "console script sam3-studio = app.main:main",
        "app healthcheck": "script docker/app_health.py",
        "worker entrypoint": "script docker/worker-entrypoint.sh",
        "worker command": "celery worker",
        "worker healthcheck": "script docker/worker_health.py",
        "Dockerfile CMD": "console script sam3-studio = app.main:main",
        "worker.Dockerfile ENTRYPOINT": "script docker/worker-entrypoint.sh",
        "worker.Dockerfile CMD": "celery worker",
    }


def test_the_compose_worker_is_the_embedded_worker(services):
    """Same queue, pool, concurrency, prefetch, gossip and mingle as app/jobs/embedded_worker.py starts;
    only the node name differs."""
    compose_name, compose_params = parse_celery(services["worker"]["command"][1:])
    dockerfile_cmd = dict(dockerfile_argvs(DOCKERFILES["worker"]))["CMD"]
    process_name, process_params = parse_celery(worker_command()[3:])  # [python, -m, celery, ...]
    assert compose_name == process_name == "worker"
    assert services["worker"]["command"] == dockerfile_cmd
    assert {k: v for k, v in compose_params.items() if k != "hostname"} == \
        {k: v for k, v in process_params.items() if k != "hostname"}
    assert compose_params["queues"] == ["train"] and compose_params["concurrency"] == 1
    # The healthcheck asks for the node by the name the worker gives itself (%h = the container's hostname).
    assert "-n" in services["worker"]["command"] and "train@%h" in services["worker"]["command"]
    assert "train@$$HOSTNAME" in services["worker"]["healthcheck"]["test"][1]


def test_the_app_serves_its_published_port_with_no_embedded_worker(services):
    from app.main import build_parser

    app = services["app"]
    args = build_parser().parse_args(app["command"][1:])
    assert args.with_worker is False and args.host == "0.0.0.0"
    [published] = app["ports"]
    assert published.endswith(f":{args.port}") and published.startswith("${STUDIO_BIND:-127.0.0.1}:")
    assert f"http://127.0.0.1:{args.port}/" in app["healthcheck"]["test"]
    assert not services["worker"].get("ports") and "container_name" not in services["worker"]


def test_app_and_workers_share_data_dir_broker_and_database(compose, services):
    app, worker = services["app"]["environment"], services["worker"]["environment"]
    for key in ("DATA_DIR", "DATABASE_URL", "REDIS_URL", "SAM3_MODEL", "HF_HOME"):
        assert app[key] == worker[key], key
    assert app["REDIS_URL"] == "redis://redis:6379/0"  # the redis service, by its name on the compose network
    mounts = {name: {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]} for name in ("app", "worker")}
    assert mounts["app"][app["DATA_DIR"]] == mounts["worker"][worker["DATA_DIR"]] == "studio-data"
    assert mounts["app"][app["HF_HOME"]] == mounts["worker"][worker["HF_HOME"]] == "hf-cache"
    used = {volume.split(":")[0] for service in services.values() for volume in service.get("volumes", [])}
    assert used == set(compose["volumes"])  # every named volume is declared, none is left over


def test_workers_scale_out_one_per_gpu(services):
    worker = services["worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and {"gpu", "utility"} <= set(device["capabilities"])
    # Every replica sees all GPUs and takes its own with a lock (docker/worker-entrypoint.sh).
    assert device["count"] == "all"
    assert worker["entrypoint"] == ["/app/docker/worker-entrypoint.sh"]
    assert worker["environment"]["GPU_LOCK_DIR"] == "/locks" and "gpu-locks:/locks" in worker["volumes"]
    assert worker["init"] is True and worker["shm_size"]


def test_the_images_contain_every_file_the_commands_run():
    patterns = dockerignore_patterns()
    needed = ["pyproject.toml", "README.md", "alembic.ini", "migrations/env.py", "app/main.py", "worker/celery_app.py",
              "app/jobs/presets/quick.yaml", "sam3_lora/train.py", "docker/app_health.py", "docker/worker_health.py",
              "docker/worker-entrypoint.sh"]
    kept_out = [path for path in needed if dockerignored(path, patterns)]
    assert kept_out == [] and all((REPO_ROOT / path).is_file() for path in needed)
    assert all(dockerignored(path, patterns) for path in (".venv/bin/python", ".git/HEAD", "data/studio.db"))
    for dockerfile in DOCKERFILES.values():
        text = dockerfile.read_text()
        assert re.search(r"^WORKDIR /app$", text, flags=re.MULTILINE)  # entry_points.IMAGE_WORKDIR
        assert "pip install --no-deps -e ." in text  # editable: migrations/ stays next to app/ (app/store/migrate.py)
        assert "[postgres]" in text  # psycopg, for DATABASE_URL=postgresql+psycopg://...
    assert repo_path("/app/docker/worker-entrypoint.sh").stat().st_mode & 0o111


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config_accepts_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker client with the compose plugin here; the checks above parse the file themselves")
    for profiles in ([], ["--profile", "postgres", "--profile", "monitoring"]):
        result = subprocess.run([*command, "-f", str(COMPOSE_FILE), *profiles, "config", "--quiet"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_the_readme_documents_every_variable_of_the_compose_file():
    """Each ${VAR:-default} of the compose file has a README row with the same default, and
    the defaults of studio settings agree with app/settings.py."""
    from app.settings import Settings

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying with Docker Compose"):readme.index("## Production checklist")]
    rows = dict(re.findall(r"^\| `([A-Z_0-9]+)` \| ([^|]+?) \|", section, flags=re.MULTILINE))
    defaults = dict(re.findall(r"\$\{([A-Z_0-9]+):-([^}]*)\}", COMPOSE_FILE.read_text()))
    assert defaults and set(defaults) == set(rows), "variables of the compose file without a README row, or the reverse"
    for name, default in defaults.items():
        assert rows[name] == (f"`{default}`" if default else "empty"), name
        if name in Settings.model_fields and name != "DATABASE_URL":  # empty DATABASE_URL: SQLite in DATA_DIR
            expected = Settings.model_fields[name].default
            expected = str(expected).lower() if isinstance(expected, bool) else str(expected)  # compose writes false
            assert expected == (default or ""), name
