"""Settings: one typed object; a bad or missing setting stops start-up with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.secret_box import SecretBox, derive_key, key_id, parse_key
from core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
REAL_KEY = "K" * 42 + "A"  # base64url of 32 bytes


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the environment (the suite's API_ENV=test included) and no .env file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("CHAT_ENV_FILE", "")
    return monkeypatch


def test_defaults_load(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings(api_env="test")
    assert settings.port == 8000 and settings.redis_url.startswith("redis://")
    assert settings.trusted_hosts == ["*"] and settings.trusted_proxies == []
    assert settings.sqlalchemy_url == (
        "mysql+asyncmy://root:@127.0.0.1:3306/chatserver?charset=utf8mb4")


def test_sqlalchemy_url_follows_changes(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings(api_env="test")
    assert settings.sqlalchemy_url.endswith(":3306/chatserver?charset=utf8mb4")  # read first
    moved = settings.model_copy(update={"mysql_port": 3307, "mysql_password": "p@ss word"})
    assert moved.sqlalchemy_url == (
        "mysql+asyncmy://root:p%40ss+word@127.0.0.1:3307/chatserver?charset=utf8mb4")
    assert settings.sqlalchemy_url.endswith(":3306/chatserver?charset=utf8mb4")


def test_sample_jwt_secret_is_refused_outside_tests(clean_env: pytest.MonkeyPatch) -> None:
    sample = next(line.split("=", 1)[1] for line in (ROOT / ".env-sample").read_text().splitlines()
                  if line.startswith("JWT_SECRET="))
    for env in ("local", "prod"):
        with pytest.raises(ConfigError) as info:
            load_settings(api_env=env, jwt_secret=sample, trusted_hosts=["chat.example.com"])
        assert "JWT_SECRET" in str(info.value)
        with pytest.raises(ConfigError):  # the built-in default is refused too
            load_settings(api_env=env, trusted_hosts=["chat.example.com"])
    assert load_settings(api_env="test", jwt_secret=sample).jwt_secret == sample
    assert load_settings(api_env="local", jwt_secret="r" * 40).api_env == "local"


@pytest.mark.parametrize(("name", "value"), [
    ("ALLOWED_ORIGINS", "http://localhost:8000,localhost:3000"),
    ("ALLOWED_ORIGINS", "https://a.example.com/path"),
    ("ALLOWED_ORIGINS", "http://a.example.com:99999"),
    ("TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip"),
    ("TRUSTED_PROXIES", "fe80::1%eth0"),
    ("TRUSTED_PROXIES", "10.0.0.0/33"),
])
def test_bad_edge_lists_name_the_variable(clean_env: pytest.MonkeyPatch, name: str,
                                          value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(api_env="test")
    assert name in str(info.value) and "\n" not in str(info.value)


def test_good_edge_lists_are_accepted(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ALLOWED_ORIGINS", "*, http://localhost:8000, https://[::1]:8443")
    clean_env.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1, ::1, 2001:db8::/32")
    settings = load_settings(api_env="test")
    assert len(settings.allowed_origins) == 3 and len(settings.trusted_proxies) == 4


def test_environment_is_read(clean_env: pytest.MonkeyPatch) -> None:
    monkeypatch = clean_env
    monkeypatch.setenv("API_ENV", "test")
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("TRUSTED_HOSTS", "a.example.com, *.b.example.com")
    settings = load_settings()
    assert settings.port == 9123
    assert settings.trusted_hosts == ["a.example.com", "*.b.example.com"]


def test_env_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("API_ENV=test\nDEFAULT_MODEL=gpt-4o\nMYSQL_DATABASE=from_file\n")
    settings = load_settings(_env_file=str(env))
    assert settings.default_model == "gpt-4o" and settings.mysql_database == "from_file"


def test_models_replace_the_built_in_table(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MODELS", '{"local-llama": {"context_window": 32768, '
                               '"max_answer_tokens": 2048}}')
    clean_env.setenv("UNKNOWN_MODEL", '{"context_window": 4096, "max_answer_tokens": 512}')
    settings = load_settings(api_env="test")
    assert list(settings.models) == ["local-llama"]  # what /model offers
    assert settings.model_spec("local-llama").context_window == 32768
    assert settings.model_spec("gpt-4o").context_window == 4096  # now an unknown model


def test_empty_json_settings_mean_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MODELS", "")
    clean_env.setenv("UNKNOWN_MODEL", " ")
    settings, defaults = load_settings(api_env="test"), Settings(api_env="test")
    assert settings.models == defaults.models and len(settings.models) > 1
    assert settings.unknown_model == defaults.unknown_model
    assert settings.unknown_model is not Settings.model_fields["unknown_model"].default


def test_bad_json_settings_name_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MODELS", '{"local": {"context_window": 1}')
    with pytest.raises(ConfigError, match="MODELS: not valid JSON") as info:
        load_settings(api_env="test")
    assert "\n" not in str(info.value)


def test_a_bad_value_inside_json_names_its_path(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MODELS", '{"local": {"context_window": 0, "max_answer_tokens": 1}}')
    with pytest.raises(ConfigError, match=r"MODELS \(local\.context_window\): Input should be "
                                          "greater than 0"):
        load_settings(api_env="test")


def test_urls_are_stripped(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_BASE_URL", " http://127.0.0.1:11434/v1 ")
    assert load_settings(api_env="test").openai_base_url == "http://127.0.0.1:11434/v1"


def test_database_url_wins_over_parts(clean_env: pytest.MonkeyPatch) -> None:
    url = "mysql+asyncmy://u:p@db:3306/x?charset=utf8mb4"
    assert load_settings(api_env="test", database_url=url).sqlalchemy_url == url


@pytest.mark.parametrize(("overrides", "named"), [
    ({"port": "not-a-port"}, "PORT"),
    ({"port": 70000}, "PORT"),
    ({"api_env": "staging"}, "API_ENV"),
    ({"jwt_secret": "short"}, "JWT_SECRET"),
    ({"api_env": "prod", "trusted_hosts": ["api.example.com"]}, "JWT_SECRET"),
    ({"api_env": "prod", "jwt_secret": "x" * 40, "secrets_key": REAL_KEY}, "TRUSTED_HOSTS"),
    ({"api_env": "prod", "jwt_secret": "x" * 40, "trusted_hosts": ["a.example.com"]},
     "SECRETS_KEY"),
    ({"secrets_key": "too-short"}, "SECRETS_KEY"),
    ({"secrets_key": "a" * 42 + "A" + "=="}, "SECRETS_KEY"),  # bad padding
    ({"secrets_old_keys": "a" * 42 + "A,nope"}, "SECRETS_OLD_KEYS"),
    ({"redis_timeout": 0}, "REDIS_TIMEOUT"),
    ({"openai_base_url": ""}, "OPENAI_BASE_URL"),
    ({"openai_base_url": "localhost:11434/v1"}, "OPENAI_BASE_URL"),
    ({"openai_base_url": "ftp://models.example.com/v1"}, "OPENAI_BASE_URL"),
    ({"translator_url": "translator:5000"}, "TRANSLATOR_URL"),
])
def test_bad_settings_name_the_variable(clean_env: pytest.MonkeyPatch,
                                        overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert "\n" not in message and named in message, message


def test_prod_with_real_secrets_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings(api_env="prod", jwt_secret="s" * 48, secrets_key=REAL_KEY,
                             trusted_hosts=["chat.example.com"])
    assert settings.api_env == "prod"
    assert SecretBox.from_settings(settings).key_ids == (key_id(parse_key(REAL_KEY)),)
    assert REAL_KEY not in repr(settings)


def sample_value(name: str) -> str:
    return next(line.split("=", 1)[1] for line in (ROOT / ".env-sample").read_text().splitlines()
                if line.startswith(f"{name}="))


def test_sample_secrets_key_is_refused_outside_tests(clean_env: pytest.MonkeyPatch) -> None:
    sample = sample_value("SECRETS_KEY")
    assert len(parse_key(sample)) == 32  # a usable key, as the tests use it...
    for env in ("local", "prod"):  # ...but public
        with pytest.raises(ConfigError) as info:
            load_settings(api_env=env, jwt_secret="r" * 40, secrets_key=sample,
                          trusted_hosts=["chat.example.com"])
        assert "SECRETS_KEY is the public sample value" in str(info.value)
    assert load_settings(api_env="test", secrets_key=sample).secrets_key == sample


def test_secrets_key_unset_is_derived_from_the_jwt_secret_outside_prod(
        clean_env: pytest.MonkeyPatch) -> None:
    for env in ("local", "test"):
        settings = load_settings(api_env=env, jwt_secret="r" * 40)
        assert settings.secrets_key is None
        assert SecretBox.from_settings(settings).key_ids == (key_id(derive_key("r" * 40)),)
    # set, it is the current key; the derived one (what unset meant) still decrypts, and the
    # old keys of a rotation too, in their order
    old = "b" * 42 + "A"
    settings = load_settings(api_env="local", jwt_secret="r" * 40, secrets_key=REAL_KEY,
                             secrets_old_keys=f" {old} ,")
    assert settings.secrets_old_keys == [old]
    assert SecretBox.from_settings(settings).key_ids == (
        key_id(parse_key(REAL_KEY)), key_id(parse_key(old)), key_id(derive_key("r" * 40)))
    # in prod nothing is derived from JWT_SECRET
    prod = load_settings(api_env="prod", jwt_secret="r" * 40, secrets_key=REAL_KEY,
                         secrets_old_keys=old, trusted_hosts=["chat.example.com"])
    assert SecretBox.from_settings(prod).key_ids == (key_id(parse_key(REAL_KEY)),
                                                     key_id(parse_key(old)))


def test_secrets_settings_are_read_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    old = "b" * 42 + "A"
    clean_env.setenv("SECRETS_KEY", REAL_KEY)
    clean_env.setenv("SECRETS_OLD_KEYS", f"{old},{'c' * 42}A")
    settings = load_settings(api_env="test")
    assert (settings.secrets_key, settings.secrets_old_keys) == (REAL_KEY, [old, "c" * 42 + "A"])
    clean_env.setenv("SECRETS_KEY", "")  # compose passes an unset value as ""
    clean_env.setenv("SECRETS_OLD_KEYS", "")
    settings = load_settings(api_env="test")
    assert (settings.secrets_key, settings.secrets_old_keys) == (None, [])


def test_env_sample_documents_every_setting() -> None:
    sample = (ROOT / ".env-sample").read_text()
    missing = [name.upper() for name in Settings.model_fields
               if name.upper() not in sample]
    assert missing == []


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test"}
    return subprocess.run([sys.executable, "-m", "scripts.serve"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**base, **env}, check=False)


def test_run_command_stops_with_one_line_on_a_bad_setting() -> None:
    result = run_serve({"JWT_SECRET": "too-short"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "JWT_SECRET" in result.stderr


def test_run_command_says_which_service_is_down_and_how_to_start_it() -> None:
    result = run_serve({"REDIS_URL": "redis://127.0.0.1:1/0", "MYSQL_PORT": "1"})
    assert result.returncode == 3
    assert "MariaDB is not reachable at 127.0.0.1:1" in result.stderr
    assert "Redis is not reachable at 127.0.0.1:1" in result.stderr
    assert "docker compose up -d" in result.stderr
    assert "scripts/start_services.sh" in result.stderr and "Traceback" not in result.stderr


def test_run_command_says_why_mariadb_refused_start_up() -> None:
    result = run_serve({"DATABASE_URL": "mysql+asyncmy://no_such_user:wrong-pass-4242@127.0.0.1:"
                                        "3306/chatserver?charset=utf8mb4"})
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "MariaDB" in lines[0] and "1045" in lines[0] and "Access denied" in lines[0]
    assert "wrong-pass-4242" not in result.stderr


def test_run_command_says_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve({"HOST": "127.0.0.1", "PORT": str(port)})
    assert result.returncode == 5, result.stderr[-2000:]
    assert result.stderr.strip() == (f"error: cannot listen on 127.0.0.1:{port}: the port is "
                                     "taken (another server running?): stop it or set PORT")


def test_start_services_script_is_what_ci_and_serve_use() -> None:
    script = (ROOT / "scripts" / "start_services.sh").read_text()
    assert "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd" in script
    assert 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""' in script
    # CI runs the README's test command, which installs the tools and starts the services.
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "bash scripts/start_services.sh" in makefile
    assert "bash scripts/install_test_tools.sh" in makefile
    for name in ("start_services.sh", "install_test_tools.sh"):
        result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)],
                                capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode == 0, result.stderr
