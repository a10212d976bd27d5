"""Settings: one typed object; a bad or missing setting stops start-up with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_load() -> None:
    settings = load_settings(api_env="test")
    assert settings.port == 8000 and settings.redis_url.startswith("redis://")
    assert "mysql+asyncmy://" in settings.sqlalchemy_url


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("TRUSTED_HOSTS", "a.example.com, *.b.example.com")
    settings = load_settings()
    assert settings.port == 9123
    assert settings.trusted_hosts == ["a.example.com", "*.b.example.com"]


def test_env_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DEFAULT_MODEL=gpt-4o\nMYSQL_DATABASE=from_file\n")
    settings = load_settings(_env_file=str(env))
    assert settings.default_model == "gpt-4o" and settings.mysql_database == "from_file"


def test_database_url_wins_over_parts() -> None:
    url = "mysql+asyncmy://u:p@db:3306/x?charset=utf8mb4"
    assert load_settings(database_url=url).sqlalchemy_url == url


@pytest.mark.parametrize(("overrides", "named"), [
    ({"port": "not-a-port"}, "PORT"),
    ({"port": 70000}, "PORT"),
    ({"api_env": "staging"}, "API_ENV"),
    ({"jwt_secret": "short"}, "JWT_SECRET"),
    ({"api_env": "prod", "trusted_hosts": ["api.example.com"]}, "JWT_SECRET"),
    ({"api_env": "prod", "jwt_secret": "x" * 40}, "TRUSTED_HOSTS"),
    ({"redis_timeout": 0}, "REDIS_TIMEOUT"),
])
def test_bad_settings_name_the_variable(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert "\n" not in message and named in message, message


def test_prod_with_real_secrets_is_accepted() -> None:
    settings = load_settings(api_env="prod", jwt_secret="s" * 48, trusted_hosts=["chat.example.com"])
    assert settings.api_env == "prod"


def test_env_sample_documents_every_setting() -> None:
    sample = (ROOT / ".env-sample").read_text()
    missing = [name.upper() for name in Settings.model_fields
               if name.upper() not in sample]
    assert missing == []


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.serve"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "CHAT_ENV_FILE": "", **env})


def test_run_command_stops_with_one_line_on_a_bad_setting() -> None:
    result = run_serve({"JWT_SECRET": "too-short"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "JWT_SECRET" in result.stderr


def test_run_command_says_which_service_is_down_and_how_to_start_it() -> None:
    result = run_serve({"REDIS_URL": "redis://127.0.0.1:1/0", "MYSQL_PORT": "1"})
    assert result.returncode == 3
    assert "MariaDB is not reachable at 127.0.0.1:1" in result.stderr
    assert "Redis is not reachable at 127.0.0.1:1" in result.stderr
    assert "docker compose up -d" in result.stderr and "redis-server" in result.stderr
