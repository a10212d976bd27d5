"""The repository's set-up: README commands, docker-compose validity, package layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
SECRETS_KEY = "s" * 42 + "A"  # base64url of 32 bytes: a valid (if silly) SECRETS_KEY


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```")]
    assert [line.split()[0:2] for line in block] == [["make", "run"], ["make", "test"]]


def test_ci_runs_the_readme_test_command() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "exec make test" in lines or "make test" in lines  # a command, not a comment


def test_compose_file_publishes_no_database_or_redis_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "cache", "app"} <= set(services)
    assert "ports" not in services["db"] and "ports" not in services["cache"]
    for name in ("db", "cache", "app"):
        assert "healthcheck" in services[name], name


def _compose_config(tmp_path: Path, env: str, *args: str) -> subprocess.CompletedProcess[str]:
    compose = require_tool("docker-compose", "docker-compose")
    shutil.copy(ROOT / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    (tmp_path / ".env").write_text(env)
    return subprocess.run([compose, "config", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_is_valid(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, (ROOT / ".env-sample").read_text(), "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_secrets(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, "", "-q")
    assert result.returncode != 0 and "MYSQL_PASSWORD" in result.stderr
    result = _compose_config(tmp_path, "MYSQL_PASSWORD=db-secret\nTRUSTED_HOSTS=chat.example.com\n",
                             "-q")
    assert result.returncode != 0 and "JWT_SECRET" in result.stderr
    result = _compose_config(tmp_path, "MYSQL_PASSWORD=db-secret\nTRUSTED_HOSTS=chat.example.com\n"
                             "JWT_SECRET=" + "j" * 48 + "\n", "-q")
    assert result.returncode != 0 and "SECRETS_KEY" in result.stderr


def test_compose_gives_each_service_only_what_it_needs(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from core.settings import load_settings

    sample = (ROOT / ".env-sample").read_text()
    env = sample.replace("MYSQL_ROOT_PASSWORD=\n", "MYSQL_ROOT_PASSWORD=root-secret\n")
    env += ("\nJWT_SECRET=" + "j" * 48 + f"\nSECRETS_KEY={SECRETS_KEY}"
            "\nTRUSTED_HOSTS=chat.example.com\nOPENAI_API_KEY=sk-x\n")
    result = _compose_config(tmp_path, env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("db", "cache", "app"):
        assert "env_file" not in services[name], name
    db_env = services["db"]["environment"]
    assert set(db_env) <= {"MARIADB_RANDOM_ROOT_PASSWORD", "MARIADB_DATABASE", "MARIADB_USER",
                           "MARIADB_PASSWORD"}, db_env
    assert "root-secret" not in result.stdout  # nobody gets the root password
    assert "sk-x" not in str(db_env) and "j" * 48 not in str(db_env)
    assert SECRETS_KEY not in str(db_env) and "SECRETS" not in str(db_env)
    app_env = services["app"]["environment"]
    assert app_env["API_ENV"] == "prod" and "MYSQL_ROOT_PASSWORD" not in app_env
    # the app's environment is a valid prod configuration...
    settings = load_settings(_env_file=None, **{k.lower(): v for k, v in app_env.items()})
    assert settings.api_env == "prod" and settings.mysql_root_password is None
    assert settings.secrets_key == SECRETS_KEY
    # ...which refuses the sample's public JWT secret and secrets key
    result = _compose_config(tmp_path, sample + "\nTRUSTED_HOSTS=chat.example.com\n")
    app_env = yaml.safe_load(result.stdout)["services"]["app"]["environment"]
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_settings(_env_file=None, **{k.lower(): v for k, v in app_env.items()})
    app_env["JWT_SECRET"] = "j" * 48
    with pytest.raises(ConfigError, match="SECRETS_KEY is the public sample value"):
        load_settings(_env_file=None, **{k.lower(): v for k, v in app_env.items()})


#: What compose sets on purpose (the db and cache services, the app's own database user, prod
#: and its required secrets); every other setting is the app's default.
COMPOSE_SETS = {"api_env", "mysql_host", "mysql_user", "mysql_password", "redis_url",
                "jwt_secret", "secrets_key", "trusted_hosts"}


def test_compose_passes_every_setting_with_the_apps_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import Settings, load_settings

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    defaults = Settings(_env_file=None, api_env="test")  # type: ignore[call-arg]
    result = _compose_config(tmp_path, "MYSQL_PASSWORD=db-secret\nJWT_SECRET=" + "j" * 48
                             + f"\nSECRETS_KEY={SECRETS_KEY}\nTRUSTED_HOSTS=chat.example.com\n")
    assert result.returncode == 0, result.stderr
    app_env = yaml.safe_load(result.stdout)["services"]["app"]["environment"]
    names = {name.upper() for name in Settings.model_fields}
    assert names - set(app_env) == {"DATABASE_URL", "MYSQL_ROOT_PASSWORD"}
    assert set(app_env) - names == set()  # no leftover of a removed setting
    for key, value in app_env.items():
        assert isinstance(value, str), key
        monkeypatch.setenv(key, value)
    settings = load_settings(_env_file=None)
    differ = {name for name in Settings.model_fields
              if getattr(settings, name) != getattr(defaults, name)}
    assert differ == COMPOSE_SETS


def test_make_creates_env_with_a_random_jwt_secret(tmp_path: Path) -> None:
    from core.secret_box import parse_key
    from core.settings import load_settings

    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / ".env-sample", tmp_path / ".env-sample")
    secrets, keys = [], []
    for _ in range(2):
        (tmp_path / ".env").unlink(missing_ok=True)
        done = subprocess.run(["make", ".env"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        env = (tmp_path / ".env").read_text()
        (line,) = [x for x in env.splitlines() if x.startswith("JWT_SECRET=")]
        secrets.append(line.removeprefix("JWT_SECRET="))
        (line,) = [x for x in env.splitlines() if x.startswith("SECRETS_KEY=")]
        keys.append(line.removeprefix("SECRETS_KEY="))
        # the rest of the sample is kept, and the file loads as it is (API_ENV=local)
        assert len(env.splitlines()) == len((ROOT / ".env-sample").read_text().splitlines())
        settings = load_settings(_env_file=str(tmp_path / ".env"), api_env="local")
        assert settings.jwt_secret == secrets[-1] and settings.secrets_key == keys[-1]
    assert secrets[0] != secrets[1] and all(len(s) >= 48 for s in secrets)
    assert keys[0] != keys[1] and all(len(parse_key(k)) == 32 for k in keys)
    assert not any(s.startswith("change-me") for s in secrets + keys)
    (tmp_path / ".env").write_text("JWT_SECRET=mine\n")  # an existing .env is never touched
    subprocess.run(["make", ".env"], cwd=tmp_path, capture_output=True, timeout=60, check=True)
    assert (tmp_path / ".env").read_text() == "JWT_SECRET=mine\n"


def test_storage_imports_neither_chat_actors_nor_web() -> None:
    for path in (ROOT / "storage").rglob("*.py"):
        text = path.read_text()
        assert "import chat_actors" not in text and "from chat_actors" not in text, path
        assert "from web" not in text and "import web" not in text, path


def test_chat_actors_know_nothing_of_web() -> None:
    for path in (ROOT / "chat_actors").rglob("*.py"):
        text = path.read_text()
        assert "from web" not in text and "import quart" not in text and "from quart" not in text, path
