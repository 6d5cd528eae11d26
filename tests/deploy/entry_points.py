"""Resolve the commands of docker-compose.yml and the Dockerfiles to entry points of the project.

`check_entry_point(argv)` accepts only what the images can run from this repository:
  - console scripts of pyproject.toml ([project.scripts]), their arguments parsed by the
    script's own argparse parser (`sam3-studio --no-worker` must be a real flag);
  - `python -m <module>` for a module that resolves here, `python <file>` for a file of
    the repository (under the images' WORKDIR /app) that compiles;
  - `celery -A <app> <command> ...`: the app found the way `-A` finds it, a Celery
    instance, and the arguments parsed by that celery command's own click parser;
  - an executable file of the repository (an entry-point script such as docker/worker-entrypoint.sh).
Anything else raises AssertionError naming the program. Services that run a third-party
image are checked against the programs that image ships (THIRD_PARTY_PROGRAMS).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_WORKDIR = "/app"  # WORKDIR of Dockerfile and docker/worker.Dockerfile: the repository root
THIRD_PARTY_PROGRAMS = {
    "redis": {"redis-server", "redis-cli"},
    "postgres": {"postgres", "pg_isready"},
    "mher/flower": {"celery"},
}
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


def console_scripts() -> dict[str, str]:
    with open(REPO_ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["scripts"]


def repo_path(path: str) -> Path:
    """A path inside the image (absolute under /app, or relative to it) -> the file in this checkout."""
    if path.startswith(IMAGE_WORKDIR + "/"):
        path = path[len(IMAGE_WORKDIR) + 1:]
    assert not os.path.isabs(path), f"{path} is outside the image's {IMAGE_WORKDIR}, where the project lives"
    return REPO_ROOT / path


def shell_argvs(line: str) -> list[list[str]]:
    """A shell command line -> the argv of each command in it (split at && || ; |)."""
    argvs, current = [], []
    for token in shlex.split(line):
        if token in SHELL_SEPARATORS:
            argvs.append(current)
            current = []
        else:
            current.append(token)
    return [argv for argv in argvs + [current] if argv]


def as_argv(value) -> list[str]:
    """A compose command / entrypoint (list, or string split like a shell) -> argv; `$$` is Compose's `$`."""
    argv = shlex.split(value) if isinstance(value, str) else list(value)
    return [token.replace("$$", "$") for token in argv]


def healthcheck_argvs(test) -> list[list[str]]:
    """The argvs of a compose healthcheck `test`: ["CMD", ...], ["CMD-SHELL", line] or a shell line."""
    if isinstance(test, str):
        return shell_argvs(test.replace("$$", "$"))
    kind, *rest = test
    if kind == "CMD":
        return [as_argv(rest)]
    if kind == "CMD-SHELL":
        return shell_argvs(rest[0].replace("$$", "$"))
    assert kind == "NONE", f"unknown healthcheck test form {kind!r}"
    return []


def service_argvs(service: dict) -> list[tuple[str, list[str]]]:
    """(where, argv) for the service's entrypoint, command and healthcheck."""
    found = [(key, as_argv(service[key])) for key in ("entrypoint", "command") if service.get(key)]
    test = service.get("healthcheck", {}).get("test", ["NONE"])
    found += [("healthcheck", argv) for argv in healthcheck_argvs(test)]
    return found


def dockerfile_argvs(path: Path) -> list[tuple[str, list[str]]]:
    """(instruction, argv) of each exec-form CMD / ENTRYPOINT of a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for instruction, value in re.findall(r"^(CMD|ENTRYPOINT)\s+(.+)$", text, flags=re.MULTILINE):
        assert value.lstrip().startswith("["), f"{path.name}: {instruction} must use the exec form (a JSON list)"
        found.append((instruction, json.loads(value)))
    return found


def parse_celery(args: list[str]) -> tuple[str, dict]:
    """`celery <args>` -> (command name, its parsed params); the app is found like `-A` finds it."""
    from celery import Celery
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    group = celery_cli.make_context("celery", list(args))
    app_name = group.params["app"]
    assert app_name, f"celery {' '.join(args)}: no -A app"
    app = find_app(app_name)
    assert isinstance(app, Celery), f"-A {app_name} is {type(app).__name__}, not a Celery app"
    group.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    rest = [*getattr(group, "_protected_args", []), *group.args]
    assert rest, f"celery {' '.join(args)}: no celery command"
    command = celery_cli.get_command(group, rest[0])
    assert command is not None, f"celery has no command {rest[0]!r}"
    return rest[0], command.make_context(rest[0], rest[1:], parent=group).params


def check_entry_point(argv: list[str]) -> str:
    """Assert that `argv` runs an entry point of this project; returns what it resolved to."""
    program, args = argv[0], argv[1:]
    scripts = console_scripts()
    if program in scripts:
        if program == "sam3-studio":
            from app.main import build_parser
        else:
            from sam3_lora.cli import build_parser
        try:
            build_parser().parse_args(args)
        except SystemExit:  # argparse printed which argument it refused
            raise AssertionError(f"{program} refuses the arguments {args}") from None
        return f"console script {program} = {scripts[program]}"
    if program in ("python", "python3"):
        assert args, "python without a module or file"
        if args[0] == "-m":
            module = args[1]
            assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
            if module == "celery":
                return "celery " + parse_celery(args[2:])[0]
            return f"module {module}"
        script = repo_path(args[0])
        assert script.is_file(), f"python {args[0]}: {script} does not exist"
        compile(script.read_text(), str(script), "exec")
        return f"script {script.relative_to(REPO_ROOT)}"
    if program == "celery":
        return "celery " + parse_celery(args)[0]
    script = repo_path(program)
    assert script.is_file(), f"{program} is neither a console script, python, celery, nor a file of the project"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    return f"script {script.relative_to(REPO_ROOT)}"


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the build context.

    fnmatch semantics, where `*` also crosses `/`; enough for the patterns we use (no `!`).
    """
    from fnmatch import fnmatch

    assert not any(p.startswith("!") for p in patterns), "negated .dockerignore patterns are not handled here"
    parts = Path(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch(prefix, pattern.rstrip("/")) for prefix in prefixes for pattern in patterns)
