"""A storage URL's password never leaves the process: no file the job or pipeline.config
writes, no attribute of the study or its trials, no line the commands print holds it.

The end-to-end test runs on a real PostgreSQL server (CI starts one) with a role of its own,
so the password is one that appears nowhere else.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from pipeline.config import compose
from pipeline.core.errors import ConfigError, first_line
from pipeline.core.secrets import MASK, mask, public
from pipeline.core.storage import open_storage
from tests.conftest import RACE, TINY, require_service, run_cli
from tests.test_parallel import PG_URL

ENV = "OPTUNA_TEST_STORAGE"
SMALL = (
    *TINY,
    *RACE,
    "race.conditions=1",
    "search.n_trials=4",
    "search.optimizers=[adam,sgd]",
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://ann:pw1@db:5432/optuna", "postgresql://ann:***@db:5432/optuna"),
        ("postgresql+psycopg://ann:p%40ss@db/o", "postgresql+psycopg://ann:***@db/o"),
        (
            "postgresql://ann@db/o?sslmode=require&password=pw1",
            "postgresql://ann@db/o?sslmode=require&password=***",
        ),
        ("postgresql://db/o?sslpassword=pw1", "postgresql://db/o?sslpassword=***"),
        ("cannot open mysql://root:pw1@h/x: refused", "cannot open mysql://root:***@h/x: refused"),
        ("postgresql://ann:p/w'1@db/o", "postgresql://ann:***@db/o"),
        ("['a://u:pw1@h', 'b://v:pw1@i']", "['a://u:***@h', 'b://v:***@i']"),
        ("journal:///studies/study.journal", "journal:///studies/study.journal"),
        ("postgresql://ann@db/optuna", "postgresql://ann@db/optuna"),
    ],
)
def test_mask_hides_passwords_and_secret_query_values(text, shown):
    assert mask(text) == shown


def test_errors_and_trial_error_lines_are_masked():
    error = ConfigError("search.storage", "cannot open postgresql://ann:pw1@db/o: refused")
    assert "pw1" not in str(error) and "pw1" not in error.message
    assert (
        first_line(RuntimeError("postgresql://ann:pw1@db/o\nmore")) == "postgresql://ann:***@db/o"
    )


def test_environment_references_stay_as_written(monkeypatch, tmp_path):
    url = "postgresql://ann:pw1@127.0.0.1:5432/optuna"
    monkeypatch.setenv(ENV, url)
    cfg = compose([f"search.storage=${{oc.env:{ENV}}}", "task.data.split_seed=3"])
    assert cfg.search.storage == url  # what the workers connect with
    assert public(cfg)["search"]["storage"] == f"${{oc.env:{ENV}}}"
    assert public(cfg)["task"]["data"]["split_seed"] == 3  # everything else resolved
    literal = compose([f"search.storage={url}"])
    assert public(literal)["search"]["storage"] == "postgresql://ann:***@127.0.0.1:5432/optuna"

    printed = run_cli("pipeline.config", f"search.storage=${{oc.env:{ENV}}}", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert f"storage: ${{oc.env:{ENV}}}" in printed.stdout and "pw1" not in printed.stdout

    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=ENV):
        compose([f"search.storage=${{oc.env:{ENV}}}"])


@pytest.fixture
def leaky() -> Iterator[tuple[str, str]]:
    """A PostgreSQL role and database of the test's own, with a password found nowhere else."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    name = f"leaky_{uuid.uuid4().hex[:8]}"
    password = f"Pw{secrets.token_hex(12)}"
    try:
        admin = sqlalchemy.create_engine(
            PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            conn.exec_driver_sql(f"GRANT {name} TO CURRENT_USER")  # to make it an owner
            conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {name}")
    except Exception as exc:
        require_service(f"cannot create a PostgreSQL role at {PG_URL}: {first_line(exc)}")
    host = PG_URL.rsplit("@", 1)[1].rsplit("/", 1)[0]
    yield f"postgresql://{name}:{password}@{host}/{name}", password
    # FORCE ends the test's own sessions, but refuses while an autovacuum worker (a
    # superuser's backend) happens to be in the new database: it ends within moments.
    for attempt in range(10):
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                conn.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
            break
        except sqlalchemy.exc.DBAPIError:
            if attempt == 9:
                raise
            time.sleep(0.5)
    admin.dispose()


def _study_text(url: str) -> str:
    """Every attribute of every study and trial in the storage, as one text."""
    storage = optuna.storages.RDBStorage(url)
    parts = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        system = storage.get_study_system_attrs(study._study_id)
        parts.append(json.dumps([study.user_attrs, system], default=str))
        for trial in study.get_trials(deepcopy=False):
            parts.append(json.dumps([trial.user_attrs, trial.system_attrs], default=str))
    storage.engine.dispose()
    assert len(parts) > 10  # the studies were found: the search below is not vacuous
    return "\n".join(parts)


def _files_holding(root: Path, secret: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and secret.encode() in p.read_bytes()
    ]


def test_the_whole_job_never_writes_the_password(tmp_path, leaky, monkeypatch):
    url, password = leaky
    literal, via_env = tmp_path / "literal", tmp_path / "env"
    literal.mkdir(), via_env.mkdir()
    env = {ENV: url}
    output = ""

    runs = [
        (literal, f"search.storage={url}", "literal"),
        (via_env, f"search.storage=${{oc.env:{ENV}}}", "via-env"),
    ]
    for cwd, storage, name in runs:
        job = run_cli("pipeline", *SMALL, storage, f"search.study_name={name}", cwd=cwd, env=env)
        output += job.stdout + job.stderr
        assert job.returncode == 0, job.stderr
        params = run_cli("pipeline.config", *SMALL, storage, cwd=cwd, env=env)
        assert params.returncode == 0, params.stderr
        (cwd / "params.yaml").write_text(params.stdout)
        output += params.stderr

    # A masked URL retyped connects without a password: libpq reads PGPASSWORD.
    masked = mask(url)
    again = run_cli(
        "pipeline.report",
        *SMALL,
        f"search.storage={masked}",
        "search.study_name=literal",
        cwd=literal,
        env={"PGPASSWORD": password},
    )
    output += again.stdout + again.stderr
    assert again.returncode == 0, again.stderr
    # An error that names the URL names it masked.
    refused = run_cli("pipeline", *SMALL, f"search.storage={url}_nosuchdb", cwd=tmp_path)
    output += refused.stdout + refused.stderr
    assert refused.returncode == 2 and "_nosuchdb" in refused.stderr, refused.stderr

    assert password not in output
    assert _files_holding(tmp_path, password) == []
    assert password not in _study_text(url)
    # What is shown instead: the masked URL, or the environment reference as written.
    report = (literal / "reports" / "index.html").read_text()
    assert masked in report and MASK in masked
    env_report = (via_env / "reports" / "index.html").read_text()
    assert f"${{oc.env:{ENV}}}" in env_report
    assert f"storage: ${{oc.env:{ENV}}}" in (via_env / "params.yaml").read_text()
    assert f"storage: {masked}" in (literal / "params.yaml").read_text()


def test_a_masked_password_is_left_to_libpq(leaky, monkeypatch):
    url, password = leaky
    monkeypatch.setenv("PGPASSWORD", password)
    storage = open_storage(mask(url))
    assert optuna.get_all_study_names(storage) == []
    storage.engine.dispose()
    monkeypatch.delenv("PGPASSWORD")
    os.environ.pop("PGPASSFILE", None)
    with pytest.raises(ConfigError, match=r"\*\*\*") as refused:
        open_storage(mask(url))
    assert password not in str(refused.value)
