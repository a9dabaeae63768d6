"""The model being served: loaded in the background, swapped atomically when a followed alias moves.

``ModelState.current`` is replaced by a single reference assignment, so the inference thread sees
either the old or the new model, never a mix; a batch already running finishes on the old one.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from model.predictor import Predictor
from model.uri import ModelRef, registry_identity, resolve_model

logger = logging.getLogger(__name__)

_ALIAS_URI = re.compile(r"^models:/[^/@]+@[^/]+/?$")


def is_alias_uri(uri: str) -> bool:
    """True for ``models:/name@alias``."""
    return bool(_ALIAS_URI.match(uri))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LoadedModel:
    """A predictor and where it came from."""

    predictor: Predictor
    ref: ModelRef
    loaded_at: str


Loader = Callable[[str, Path], LoadedModel]


class ModelState:
    """Holds the serving model; loads it (and later targets of a followed alias) in a thread.

    A followed alias is compared by identity (``model.uri.version_identity``: registry, name, version,
    run id, source, creation time), never by version number alone: a registered model deleted and
    registered again, or a registry recreated at the same path, starts again at version 1 with other
    weights, and is loaded at the next poll. Failed polls are counted in ``poll_error`` (logged once,
    and once more when polling recovers).

    Args:
        uri: the model URI.
        load: ``(uri, download_dir) -> LoadedModel``; the default resolves and loads with ``Predictor.load``.
        follow_alias_s: poll the registry every this many seconds (only for ``models:/name@alias``).
        download_dir: where registry models are downloaded (default: a temporary directory).
        on_loaded: called with each model once it serves.
        on_failure: called after each failed load.
    """

    def __init__(
        self,
        uri: str,
        load: Loader,
        follow_alias_s: float | None = None,
        download_dir: str | None = None,
        on_loaded: Callable[[LoadedModel], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ):
        self.uri = uri
        self._load = load
        self.follow_alias_s = follow_alias_s if follow_alias_s and is_alias_uri(uri) else None
        if follow_alias_s and not self.follow_alias_s:
            logger.warning("--follow-alias ignored: %s is not a models:/NAME@ALIAS URI", uri)
        self._tmp = None if download_dir else tempfile.TemporaryDirectory(prefix="adrisk-serve-")
        self.download_dir = Path(download_dir) if download_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.on_loaded = on_loaded
        self.on_failure = on_failure
        self.current: LoadedModel | None = None
        self.load_error: dict | None = None
        self.poll_error: dict | None = None  # {"error", "failures", "since", "at"} while polls fail
        self._failed_identity: dict[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._attempts = 0

    def start(self) -> None:
        """Load the model (and keep following the alias) in a background thread."""
        self._thread = threading.Thread(target=self._run, name="adrisk-model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def get(self) -> tuple[Predictor, LoadedModel] | None:
        """``(predictor, loaded_model)`` of the serving model, or None before the first load."""
        cur = self.current
        return (cur.predictor, cur) if cur is not None else None

    def _try_load(self, target: dict[str, str] | None) -> None:
        self._attempts += 1
        version = target["version"] if target else None
        dst = self.download_dir / f"load-{self._attempts}"
        try:
            loaded = self._load(self.uri, dst)
        except Exception as e:
            shutil.rmtree(dst, ignore_errors=True)
            self._failed_identity = target
            self.load_error = {"version": version, "error": f"{type(e).__name__}: {e}", "at": _now()}
            logger.error(
                "loading %s (version %s) failed, %s: %s",
                self.uri,
                version,
                f"keeping version {self.current.ref.version}" if self.current else "no model serving",
                self.load_error["error"],
            )
            if self.on_failure:
                self.on_failure()
            return
        old = self.current
        previous = old.ref.version if old else None
        self.current = loaded  # the atomic swap
        self.load_error = None
        self._failed_identity = None
        if old is not None and self.download_dir in old.ref.directory.parents:
            # the old model is in memory; its download is no longer needed (a batch still running on
            # it is unaffected: open files stay readable after unlinking)
            shutil.rmtree(
                self.download_dir / old.ref.directory.relative_to(self.download_dir).parts[0],
                ignore_errors=True,
            )
        del old
        freeze_long_lived()
        logger.info(
            "serving %s version %s (run %s; was %s)",
            loaded.ref.name,
            loaded.ref.version,
            loaded.ref.run_id,
            previous,
        )
        if self.on_loaded:
            self.on_loaded(loaded)

    def _serves(self, target: dict[str, str]) -> bool:
        """Whether the serving model is ``target`` (by identity; by version number only for a loader
        that records no identity)."""
        cur = self.current
        if cur is None:
            return False
        if cur.ref.identity is not None:
            return cur.ref.identity == target
        return cur.ref.version == target["version"]

    def _poll(self) -> dict[str, str] | None:
        """The alias's target identity now, or None when the registry read fails (counted in
        ``poll_error``: logged at the first failure and at recovery, never per poll)."""
        try:
            target = registry_identity(self.uri)
        except Exception as e:
            now, summary = _now(), summarise_error(e)
            err = self.poll_error
            if err is None:
                logger.warning(
                    "polling %s failed, %s; retrying every %s s (failures are counted in /v1/model poll_error)",
                    self.uri,
                    summary,
                    self.follow_alias_s,
                )
                self.poll_error = {"error": summary, "failures": 1, "since": now, "at": now}
            else:
                self.poll_error = {**err, "error": summary, "failures": err["failures"] + 1, "at": now}
            return None
        if self.poll_error is not None:
            logger.info(
                "registry poll of %s recovered after %d failures", self.uri, self.poll_error["failures"]
            )
            self.poll_error = None
        return target

    def _run(self) -> None:
        if self.follow_alias_s:
            open_registry_per_poll()
        self._try_load(None)
        interval = self.follow_alias_s or 5.0
        while not self._stop.wait(interval):
            if self.follow_alias_s is None:
                if self.current is not None:
                    return  # nothing to follow
                self._try_load(None)  # a failed first load is retried
                continue
            target = self._poll()
            if target is None:
                continue
            if self.current is None or (not self._serves(target) and target != self._failed_identity):
                logger.info(
                    "alias %s now points at version %s (run %s); loading",
                    self.uri,
                    target["version"],
                    target["run_id"],
                )
                self._try_load(target)


_CREDENTIALS = re.compile(r"(://)[^/@\s]*@")


def summarise_error(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` without credentials in URLs, at most ``limit`` characters
    (a database error's message goes on with its SQL statement and parameters)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return _CREDENTIALS.sub(r"\1***@", f"{type(e).__name__}: {first}")[:limit]


def open_registry_per_poll() -> None:
    """Make MLflow's SQL stores in this process open a connection per registry read and close it after
    (SQLAlchemy's ``NullPool``, through ``MLFLOW_SQLALCHEMYSTORE_POOLCLASS``), unless the user chose a
    pool class. A pooled SQLite connection keeps the file's old inode open: a registry moved away or
    recreated at the same path while a server follows an alias is then read (and locked) through the
    stale handle, which SQLite documents as a way to corrupt a database. Takes effect for engines
    created after the call: the loader thread calls it before its first registry read.
    """
    if not os.environ.get("MLFLOW_SQLALCHEMYSTORE_POOLCLASS"):
        os.environ["MLFLOW_SQLALCHEMYSTORE_POOLCLASS"] = "NullPool"


def freeze_long_lived() -> None:
    """Take every object alive now (the model, its tokenizer, the app) out of the cyclic garbage
    collector's generations (``gc.freeze``, Python >= 3.7, as Instagram's servers do): a full
    collection otherwise walks them all on whichever request triggers it, a pause of tens to hundreds
    of milliseconds in the latency tail (``bench/serve_load.py``). Unfrozen and collected first, so a
    replaced model's reference cycles are freed at the next swap; refcounting frees the rest as usual.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def default_loader(runtime: str = "auto", num_threads: int | None = None) -> Loader:
    """A loader that resolves the URI (downloading from MLflow when needed) and loads a Predictor."""

    def load(uri: str, dst: Path) -> LoadedModel:
        ref = resolve_model(uri, dst)
        predictor = Predictor.load(ref.directory, runtime=runtime, num_threads=num_threads)
        predictor.predict([""])  # warm up before serving
        return LoadedModel(predictor, ref, _now())

    return load


_ABSENT = object()


class RecentClassifications:
    """Texts of the last ``capacity`` classify requests, by request id (thread-safe LRU, memory only)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, list[str] | None] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, request_id: str, texts: list[str]) -> None:
        """Remember ``texts`` under ``request_id``. A client-chosen id (``X-Request-ID``) reused for
        other texts makes that id ambiguous: feedback by it is refused (404) rather than recorded
        against another request's ad."""
        if self.capacity <= 0:
            return
        with self._lock:
            previous = self._items.get(request_id, _ABSENT)
            if previous is _ABSENT or previous == texts:
                self._items[request_id] = list(texts)
            else:
                self._items[request_id] = None
            self._items.move_to_end(request_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> list[str] | None:
        with self._lock:
            return self._items.get(request_id)
