"""The policy a server applies: a policy file, reloaded on change, or the serving model's thresholds.

``adrisk serve --policy F`` loads F at start (a bad file stops the start with one line) and then
polls it: a change that has settled (the same at two looks, ``policy_poll_s`` apart) is validated (fields, the serving model's labels, the API keys' tenants,
the contact key, a new version for new content) and swapped in by one reference assignment, so a
request sees the old or the new policy, never a mix, and none is dropped. A bad reload keeps the
previous policy, logs one line and shows in ``GET /v1/policy`` and ``/metrics``. Without a file the
serving model's thresholds are the policy (``signals.policy.default_policy``), one per model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from signals.policy import Policy, PolicyEngine, PolicyError, default_policy, load_policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedPolicy:
    engine: PolicyEngine
    source: str  # "file" or "model-thresholds"
    loaded_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PolicyState:
    """Holds the policy and, with a file, follows it.

    Args:
        path: the policy file (None: the model's thresholds).
        labels: the serving model's labels, or None before one is loaded (checked at each reload).
        tenants: the tenants the API keys carry (checked at each load).
        hash_key: the contact-hashing key for a blocklist.
        register: stores each policy version before it is used (the decision log's
            ``register_policy``); may raise to refuse it.
        poll_s: seconds between checks of the file.
        on_reload: called with True / False after each reload attempt (metrics).

    Raises:
        PolicyError: the file is bad at start (one line).
    """

    def __init__(
        self,
        path: str | None,
        labels: Callable[[], list[str] | None],
        tenants: set[str],
        hash_key: str | None = None,
        register: Callable[[Policy], None] | None = None,
        poll_s: float = 2.0,
        on_reload: Callable[[bool], None] | None = None,
    ):
        self.path = Path(path) if path else None
        self._labels = labels
        self.tenants = tenants
        self.hash_key = hash_key
        self._register = register
        self.poll_s = poll_s
        self.on_reload = on_reload
        self.reload_error: dict | None = None
        self.file: LoadedPolicy | None = None
        self._defaults: dict[tuple, LoadedPolicy] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp: tuple | None = None  # the file as last loaded
        if self.path is not None:
            self._stamp = self._file_stamp()
            self.file = self._load(labels())
        self._seen = self._stamp  # the file as last looked at

    def _file_stamp(self) -> tuple | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, labels: list[str] | None) -> LoadedPolicy:
        assert self.path is not None
        policy = load_policy(self.path)
        where = f"policy {self.path}"
        try:
            if labels is not None:
                policy.check_context(labels, self.tenants)
            else:
                policy.check_context(list(policy.categories), self.tenants)
            engine = PolicyEngine(policy, hash_key=self.hash_key)
            if self._register is not None:
                self._register(policy)
        except PolicyError as e:
            raise PolicyError(f"{where}: {e}") from None
        except Exception as e:  # the decision log refusing a version, or failing
            raise PolicyError(f"{where}: {e}") from None
        return LoadedPolicy(engine, "file", _now())

    def attach(self, register: Callable[[Policy], None]) -> None:
        """Store every policy version from now on with ``register`` (the decision log), the file's
        current one at once.

        Raises:
            Exception: whatever ``register`` raises for the current policy (e.g. a version already
                logged with other content).
        """
        self._register = register
        if self.file is not None:
            register(self.file.engine.policy)

    def check_model(self, labels: list[str]) -> None:
        """Refuse a model whose labels the file policy does not fit (a followed alias's new model).

        Raises:
            PolicyError: one line naming the mismatch.
        """
        cur = self.file
        if cur is not None:
            try:
                cur.engine.policy.check_context(labels)
            except PolicyError as e:
                raise PolicyError(f"policy {cur.engine.version} does not fit this model: {e}") from None

    def engine_for(
        self, labels: tuple[str, ...], thresholds: dict[str, float], benign: str | None
    ) -> LoadedPolicy:
        """The policy for a model with these labels and thresholds: the file's, else its own thresholds'."""
        cur = self.file
        if cur is not None:
            return cur
        key = (labels, tuple(sorted(thresholds.items())), benign)
        got = self._defaults.get(key)
        if got is None:
            with self._lock:
                got = self._defaults.get(key)
                if got is None:
                    pol = default_policy(labels, thresholds, benign)
                    if self._register is not None:
                        self._register(pol)
                    got = self._defaults[key] = LoadedPolicy(PolicyEngine(pol), "model-thresholds", _now())
        return got

    # -- following the file --------------------------------------------------------------------------
    def start(self) -> None:
        if self.path is not None:
            self._thread = threading.Thread(target=self._run, name="adrisk-policy-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def check_now(self) -> bool:
        """Reload the file once a change has settled: it changed since the last load and looked the same
        (mtime, size, inode) at the previous look, so a file caught half-written by an editor is not
        read. True when a new policy was swapped in."""
        stamp = self._file_stamp()
        if stamp != self._seen:
            self._seen = stamp
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            loaded = self._load(self._labels())
        except PolicyError as e:
            prev = self.file.engine.version if self.file else None
            self.reload_error = {"error": str(e), "at": _now()}
            logger.error("policy reload failed, keeping version %s: %s", prev, e)
            if self.on_reload:
                self.on_reload(False)
            return False
        old = self.file.engine.version if self.file else None
        self.file = loaded  # the atomic swap
        self.reload_error = None
        logger.info("policy version %s loaded (was %s)", loaded.engine.version, old)
        if self.on_reload:
            self.on_reload(True)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_now()
            except Exception as e:  # never let the watcher die
                logger.error("policy watcher: %s", type(e).__name__)
