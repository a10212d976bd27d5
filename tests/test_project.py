"""The repository's set-up: README commands, docker-compose validity, package layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```")]
    assert [line.split()[0:2] for line in block] == [["make", "run"], ["make", "test"]]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_compose_file_publishes_no_database_or_redis_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "cache", "app"} <= set(services)
    assert "ports" not in services["db"] and "ports" not in services["cache"]
    for name in ("db", "cache", "app"):
        assert "healthcheck" in services[name], name


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    env = (ROOT / ".env-sample").read_text().replace("MYSQL_ROOT_PASSWORD=\n",
                                                     "MYSQL_ROOT_PASSWORD=root-secret\n")
    (tmp_path / ".env").write_text(env)
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_refuses_to_run_without_secrets(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    (tmp_path / ".env").write_text("")
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "MYSQL_ROOT_PASSWORD" in result.stderr


def test_storage_imports_neither_chat_actors_nor_web() -> None:
    for path in (ROOT / "storage").rglob("*.py"):
        text = path.read_text()
        assert "import chat_actors" not in text and "from chat_actors" not in text, path
        assert "from web" not in text and "import web" not in text, path


def test_chat_actors_know_nothing_of_web() -> None:
    for path in (ROOT / "chat_actors").rglob("*.py"):
        text = path.read_text()
        assert "from web" not in text and "import quart" not in text and "from quart" not in text, path
