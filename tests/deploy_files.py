"""Reading the deployment files the way their tools do: ``.env``, compose interpolation,
the tritonserver flags the bundled binary accepts. Shared by the static and e2e tests."""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_FILE = ROOT / ".env"
K8S_DIR = ROOT / "deploy" / "k8s"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^${}]*))?\}")


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Docker Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, nested, and $$."""
    text = text.replace("$$", "\0")
    while True:
        match = _VARIABLE.search(text)
        if match is None:
            return text.replace("\0", "$")
        name, operator, argument = match.groups()
        value = env.get(name)
        if operator in (":-", "-"):
            value = value if value else argument
        elif operator in (":?", "?") and not value:
            raise KeyError(f"{name}: {argument}")
        text = text[: match.start()] + (value or "") + text[match.end() :]


def load_compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env))


def load_k8s() -> list[tuple[Path, dict]]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        documents.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def tritonserver_help() -> str:
    return _help_text()


@lru_cache(maxsize=1)
def _help_text() -> str:
    from hf2triton.serving import find_bundled_tritonserver, server_environment

    distribution = find_bundled_tritonserver()
    run = subprocess.run(
        [str(distribution.server_binary), "--help"],
        env=server_environment(distribution),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run.stdout + run.stderr


def tritonserver_flags() -> set[str]:
    return set(re.findall(r"^\s+--([a-z0-9-]+)", tritonserver_help(), flags=re.MULTILINE))


def restricted_api_names() -> set[str]:
    """The API names --http-restricted-api accepts ("Allowed APIs: health, metadata, ...")."""
    match = re.search(r"Allowed APIs:(.*?)\n\s*\n", tritonserver_help(), flags=re.DOTALL)
    assert match, "tritonserver --help no longer lists the restricted APIs"
    return {name.strip() for name in match.group(1).replace("\n", " ").split(",")}
