"""A workspace folder: the SQLite database plus the files it references.

Layout: ``refact.db``, ``deltas/``, ``images/``, ``stats/`` (covariance cache), ``exports/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from engine.methods.refact.hparams import default_temperature
from store.base_models import register_base_model
from store.db import StoreError, get_meta, open_db, transaction
from store.histories import create_history, current_history, set_current_history
from store.integrity import open_checked
from store.records import BaseModelRow, HistoryRow

DB_NAME = "refact.db"
ENV_VAR = "REFACT_WORKSPACE"
DEFAULT_DIR = "refact-workspace"
_SUBDIRS = ("deltas", "images", "stats", "exports")


class WorkspaceError(Exception):
    """The workspace folder is missing, not initialized, or not usable (one-line message)."""


@dataclass(frozen=True)
class BaseModelInfo:
    """What the store records about a base model (taken from a loaded model)."""

    source: str
    path: str
    kind: str
    encoder_family: str
    encoder_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None        # the workspace's default load dtype (None: as the files store it)
    files_hash: str | None = None   # sha256 of the stored text-encoder files (services.working_model)


@dataclass
class Workspace:
    root: Path
    db: sqlite_utils.Database
    deltas_dir: Path
    images_dir: Path
    stats_dir: Path
    exports_dir: Path
    read_only: bool = False
    dtype: str | None = None  # this session's load dtype (a command's --dtype); None: the base's default

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @classmethod
    def open(cls, root: Path | str, read_only: bool = False) -> "Workspace":
        """Open an initialized workspace; WorkspaceError if there is none at ``root``.

        Commands that only read pass ``read_only``: the database is opened ``mode=ro`` and never
        migrated, so a workspace of an older schema is refused (``refact migrate`` upgrades it)
        instead of being rewritten by a look at it. Writers migrate it on open, in one transaction.
        """
        root = Path(root).expanduser().absolute()
        if not (root / DB_NAME).is_file():
            raise WorkspaceError(f"no workspace at {root}; run `refact init --model PATH` first")
        try:
            db = open_checked(root / DB_NAME, read_only=read_only)
        except StoreError as exc:
            raise WorkspaceError(str(exc)) from None
        return cls._from(root, db, read_only)

    @classmethod
    def _from(cls, root: Path, db: sqlite_utils.Database, read_only: bool = False) -> "Workspace":
        return cls(root, db, root / "deltas", root / "images", root / "stats", root / "exports", read_only)

    def history(self) -> HistoryRow:
        """The current history."""
        return current_history(self.db)

    def relative(self, path: Path | str) -> str:
        """A path as stored in the database (relative to the root when inside it)."""
        p = Path(path)
        try:
            return p.absolute().relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, stored: str) -> Path:
        """The absolute path of a path stored in the database."""
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class MigrationResult:
    """What `refact migrate` did: the schema version before and after."""

    root: Path
    before: int
    after: int

    @property
    def upgraded(self) -> bool:
        return self.after != self.before


def migrate_workspace(root: Path | str) -> MigrationResult:
    """Upgrade the workspace database at ``root`` to this refact-tui's schema (one transaction)."""
    from store.db import OutdatedSchemaError, schema_version

    root = Path(root).expanduser().absolute()
    if not (root / DB_NAME).is_file():
        raise WorkspaceError(f"no workspace at {root}; run `refact init --model PATH` first")
    before = None
    try:
        open_db(root / DB_NAME, read_only=True).close()
    except OutdatedSchemaError as exc:
        before = exc.found
    except StoreError as exc:
        raise WorkspaceError(str(exc)) from None
    with Workspace.open(root) as ws:  # the writable open applies the pending migrations
        after = schema_version(ws.db)
    return MigrationResult(root, after if before is None else before, after)


def resolve_root(option: Path | str | None = None) -> Path:
    """--workspace if given, else $REFACT_WORKSPACE, else ./refact-workspace (absolute)."""
    value = option if option not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(value).expanduser().absolute()


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def describe_model(model_source: str | Path, dtype: str | None = None) -> BaseModelInfo:
    """Load the model offline (text encoder only, directly in ``dtype``) and collect what the store
    records about it, ``dtype`` as its default load dtype."""
    from engine.models import load_model  # lazy: torch/transformers only when a model is needed

    return describe_loaded(load_model(model_source, device="cpu", with_pipeline=False, dtype=dtype), model_source)


def describe_loaded(model: Any, model_source: str | Path) -> BaseModelInfo:
    """What the store records about an already loaded model (``model_source`` as the user gave it): its
    hash in the dtype it was loaded in, that dtype as the default, and its stored files' hash."""
    config: dict[str, Any] = {
        "num_layers": int(model.adapter.num_layers),
        "max_length": int(model.adapter.max_length),
    }
    encoder_config = getattr(model.text_encoder, "config", None)
    if encoder_config is not None and hasattr(encoder_config, "to_dict"):
        config["text_encoder"] = _json_safe(encoder_config.to_dict())
    config["family"] = str(getattr(model, "family", model.adapter.family))
    config["slots"] = slot_defaults(model)
    from refact_tui.services.working_model import base_files_hash, model_weights_hash

    return BaseModelInfo(
        source=str(model_source),
        path=str(model.path),
        kind=model.kind,
        encoder_family=model.adapter.family,
        encoder_hash=model_weights_hash(model),
        config=config,
        dtype=getattr(model, "dtype", None),
        files_hash=base_files_hash(model),
    )


def slot_defaults(model: Any) -> dict[str, dict[str, Any]]:
    """Per encoder slot, what the workspace records and uses as defaults: its layer count, editable
    range, token limit, readout, family, default depth and layer (see docs/PIPELINES.md), temperature
    and its base encoder hash. Slot order is the model's."""
    slots = getattr(model, "slots", None) or []
    return {
        s.name: {
            "family": s.family,
            "num_layers": s.num_layers,
            "editable": [0, s.adapter.last_editable],
            "max_length": s.max_length,
            "readout": s.readout.spec(),
            "default_layer": s.default_layer(),
            "default_depth": s.default_depth,
            "key_size": int(s.adapter.key_size),
            "temperature": default_temperature(s.adapter.normalized_features),
            "encoder_hash": s.encoder_hash(),
        }
        for s in slots
    }


def register_model(db: sqlite_utils.Database, base: BaseModelInfo) -> BaseModelRow:
    """Record a base model in the workspace store (inside the caller's transaction)."""
    return register_base_model(db, base.source, base.path, base.kind, base.encoder_family, base.encoder_hash,
                               base.config, dtype=base.dtype, files_hash=base.files_hash)


def _make_dirs(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        for sub in _SUBDIRS:
            (root / sub).mkdir(exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(
            f"cannot create the workspace at {root}: {exc.strerror or exc}; pick a writable --workspace"
        ) from None
    if not os.access(root, os.W_OK):
        raise WorkspaceError(f"the workspace folder {root} is not writable; pick a writable --workspace")


def _refuse_existing(root: Path) -> None:
    if not (root / DB_NAME).exists():
        return
    try:
        existing = open_checked(root / DB_NAME)
    except StoreError as exc:
        raise WorkspaceError(str(exc)) from None
    try:
        if get_meta(existing, "current_history_id") is not None:
            raise WorkspaceError(f"a workspace already exists at {root}; use it, or pass another --workspace")
    finally:
        existing.close()


def create_workspace(root: Path | str, base: BaseModelInfo, history: str = "main") -> Workspace:
    """Create the folders and database, register ``base`` and make a new history current."""
    root = Path(root).expanduser().absolute()
    _refuse_existing(root)
    _make_dirs(root)
    try:
        db = open_db(root / DB_NAME, create=True)
    except StoreError as exc:
        raise WorkspaceError(str(exc)) from None
    try:
        with transaction(db):
            row = register_model(db, base)
            hist = create_history(db, row.id, history)
            set_current_history(db, hist.id)
    except StoreError as exc:
        db.close()
        raise WorkspaceError(str(exc)) from None
    return Workspace._from(root, db)


def init_workspace(root: Path | str, model_source: str | Path, history: str = "main",
                   dtype: str | None = None) -> Workspace:
    """Load the model (offline, directly in ``dtype``), then create the workspace with it as the base of
    ``history`` and ``dtype`` as the workspace's default load dtype (None: as the files store it).

    The model is loaded first, so a bad model leaves no half-made workspace behind.
    """
    root = Path(root).expanduser().absolute()
    _refuse_existing(root)  # fail before the slow model load
    base = describe_model(model_source, dtype)
    return create_workspace(root, base, history)
