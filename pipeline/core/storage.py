"""Open the Optuna storage a study lives in, from the URL in search.storage.

    journal:///studies/study.journal     workers on one machine or a shared file system (default)
    sqlite:///studies/study.db           one worker
    postgresql://user@host/db            several workers on several machines

A password is best kept out of the URL: libpq reads PGPASSWORD or ~/.pgpass, and
`search.storage='${oc.env:OPTUNA_STORAGE}'` reads the whole URL from the environment (kept
unresolved wherever the config is written). A URL whose password is the mask `***` (as the
report shows it) connects without one, so the same libpq sources apply.

SQLite is not for parallel writers ("database is locked"); the journal file and PostgreSQL are
Optuna's own answers for that, so parallel runs use them and nothing of ours.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from sqlalchemy import event

from pipeline.core.errors import ConfigError, first_line
from pipeline.core.secrets import MASK, mask

STORAGE_FORMS = (
    "sqlite:///PATH.db, journal:///PATH.journal, postgresql://USER@HOST/DB or grpc://HOST:PORT"
)
GRPC = re.compile(r"^grpc://([^:/]+):(\d+)/?$")  # Optuna's storage proxy (pipeline.core.proxy)

LOCK_GRACE = 10  # seconds: see open_storage


def check_storage_url(url: str, *, key: str = "search.storage") -> None:
    if url.startswith(("sqlite:///", "journal:///")):
        if not url.split(":///", 1)[1]:
            raise ConfigError(key, f"{url!r} names no file; use {STORAGE_FORMS}")
        return
    if re.match(r"^postgresql(\+\w+)?://", url) or re.match(r"^mysql(\+\w+)?://", url):
        return
    if GRPC.match(url):
        return
    raise ConfigError(key, f"{url!r} is not a storage URL; use {STORAGE_FORMS}")


# RDB storages (SQLite, PostgreSQL) record a heartbeat so that a trial whose worker died on
# another machine is marked failed; on this machine a dead worker's pid tells us sooner.
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180  # launcher.grace changes it for the command that watches remote workers
# A journal file or the gRPC proxy keeps no heartbeat: a launcher's worker advances a count on
# its running trial this often instead (pipeline.search.stale.beating).
BEAT_SECONDS = 30


def storage_path(url: str) -> Path | None:
    """The file behind a sqlite:/// or journal:/// URL (relative to the working directory)."""
    if url.startswith(("sqlite:///", "journal:///")):
        return Path(url.split(":///", 1)[1])
    return None


def open_storage(url: str, *, must_exist: bool = False, key: str = "search.storage") -> BaseStorage:
    check_storage_url(url, key=key)
    path = storage_path(url)
    if path is not None:
        _older(url, path)
        if must_exist and not path.is_file():
            raise ConfigError(key, f"no study file at {path}; run python -m pipeline.search first")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(key, f"cannot create {path.parent}: {exc}") from None
    try:
        if url.startswith("journal:///"):
            # The lock a write holds for milliseconds; one left by a process killed mid-write
            # is taken over after LOCK_GRACE seconds (Optuna's default, 30, stalls the rerun).
            # An absolute path: the lock is a symlink to the journal, and Optuna reads a left
            # lock's age through it; a relative target resolves beside the link, to nothing,
            # and Optuna then retries without sleeping, for ever (100 % of a core).
            absolute = str(path.resolve())
            lock = JournalFileSymlinkLock(absolute, grace_period=LOCK_GRACE)
            return JournalStorage(JournalFileBackend(absolute, lock_obj=lock))
        grpc = GRPC.match(url)
        if grpc:
            # Hundreds of workers share one proxy's connection pool to the database instead
            # of opening one each (docs/cluster.md).
            from optuna.storages import GrpcStorageProxy

            proxy = GrpcStorageProxy(host=grpc[1], port=int(grpc[2]))
            proxy.wait_server_ready(timeout=10)
            return proxy
        if url.startswith("sqlite"):
            # One machine only, where a dead worker's pid is checked directly: no heartbeat.
            storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
            event.listen(storage.engine, "connect", _sqlite_pragmas)
            storage.engine.dispose()  # the connection made while creating tables predates it
            return storage
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                _unmasked(url), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
            )
    except ModuleNotFoundError as exc:
        raise ConfigError(
            key,
            f"cannot open {url}: {exc}; install it, e.g. pip install -e '.[postgres]'",
        ) from None
    except Exception as exc:
        first = first_line(exc)
        if "DB access module" in first:
            first += " (for PostgreSQL: pip install -e '.[postgres]')"
        if _unmasked(url) != url:
            first += f" (the password {MASK} is a mask: set PGPASSWORD, or use ~/.pgpass)"
        raise ConfigError(key, f"cannot open {url}: {first}") from None


def _older(url: str, path: Path) -> None:
    """Refuse to start afresh beside a study an older version kept in studies/study.db."""
    old = path.with_suffix(".db")
    if url.startswith("journal:///") and not path.exists() and old.is_file():
        raise ConfigError(
            "search.storage",
            f"{old} holds a study from an older version (SQLite, the old default); continue it "
            f"with search.storage=sqlite:///{old} search.n_workers=1, or move it away to "
            f"start a new study in {path}",
        )


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    """Write-ahead logging: a trial's dozen small writes cost about half as much.

    With synchronous=NORMAL a killed process loses nothing that was committed; only a power
    cut can lose the last transactions. close() folds the log back into the .db file.
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def close(study: optuna.Study) -> None:
    """Release the study's connections (SQLite then folds its write-ahead log into the file)."""
    storage = study._storage  # Optuna has no public close; the engine is the RDB storage's
    inner = getattr(storage, "_backend", storage)  # RDBStorage sits inside Optuna's cache
    engine = getattr(inner, "engine", None)
    if engine is not None:
        engine.dispose()


def _unmasked(url: str) -> str:
    """A URL whose password is the mask connects without one (libpq: PGPASSWORD, ~/.pgpass)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.password != MASK:
        return url
    # URL.set(password=None) keeps the old value: None there means "unchanged".
    return parsed._replace(password=None).render_as_string(hide_password=False)


def load_study(url: str, study_name: str) -> optuna.Study:
    """An existing study, for reading (the report)."""
    storage = open_storage(url, must_exist=True)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise ConfigError(
            "search.study_name",
            f"no study {study_name!r} in {mask(url)}; it holds: {names} (give the overrides "
            "its search ran with, or search.study_name=NAME)",
        ) from None
