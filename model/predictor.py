"""The predictor: loads a model artifact and scores texts. Used by the CLI, the pyfunc, the server
and the batch scoring job alike.

Scores are calibrated probabilities (temperature scaling, see ``model.calibration``); an ad is
*flagged* when any flaggable label's probability reaches that label's threshold.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.artifact import ArtifactError, ArtifactMeta, load_meta, verify_weights
from model.blend import TfidfBlend
from model.calibration import calibrated_probabilities
from model.encoding import Encoded, TextEncoder, length_sorted_batches
from model.runtimes import Runtime, select_runtime

logger = logging.getLogger(__name__)

# Chosen by measurement (docs/performance.md, "Thread and batch settings"): CPU time per text is lowest
# when a forward pass's activations stay in cache; rows per batch matter little once the token budget binds.
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class Prediction:
    """One text's result: ``category_scores`` are calibrated probabilities in [0, 1]."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    truncated: bool

    def to_dict(self) -> dict:
        return {
            "flagged": self.flagged,
            "categories": self.categories,
            "category_scores": self.category_scores,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class Scores:
    """Batch output in input order: ``logits``/``probabilities`` (n, L), ``flagged`` (n,) bool,
    ``truncated`` (n,) bool."""

    logits: np.ndarray
    probabilities: np.ndarray
    flagged: np.ndarray
    truncated: np.ndarray


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """One str or a sequence of str as a list, in order (the one input check of every scoring entry).

    Raises:
        TypeError: an item is not a str (named by index; the value is never shown).
    """
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"item {i} is {type(t).__name__}, expected str")
    return texts


class Predictor:
    """Scores ad texts with a trained artifact.

    Thread-safe: one lock serialises tokenisation and the forward pass (fast tokenizers are not
    safe to share across threads). Batches are length-sorted and dynamically padded.

    Args:
        encoder: the artifact's ``TextEncoder``.
        runtime: a ``Runtime`` computing logits.
        meta: the artifact's ``ArtifactMeta``.
        batch_size: most texts per forward pass.
        max_tokens: most padded tokens per forward pass.

    Raises:
        ValueError: non-positive batch settings, or an encoder whose identity mask is not ``meta``'s
            (``model/identity_mask.py``: train and serve must transform texts alike).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        runtime: Runtime,
        meta: ArtifactMeta,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        blend: TfidfBlend | None = None,
    ):
        if batch_size < 1 or max_tokens < 1:
            raise ValueError("batch_size and max_tokens must be positive")
        if getattr(encoder, "identity_mask", None) != meta.identity_mask:
            # a model trained on masked texts served unmasked ones (or the reverse) would score other text
            raise ValueError(
                "the encoder's identity mask differs from the artifact's (adrisk.json identity_mask)"
            )
        self.blend = blend
        self._encoder_pool: ThreadPoolExecutor | None = None
        self._encoder_pool_pid = 0
        self.encoder = encoder
        self.runtime = runtime
        self.meta = meta
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.directory: Path | None = None
        self._lock = threading.Lock()
        _LIVE_PREDICTORS.add(self)
        self._thresholds = np.asarray(meta.threshold_vector(), dtype=np.float64)
        benign = meta.label_schema.benign_label
        self._flaggable = np.asarray([n != benign for n in meta.labels], dtype=bool)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        runtime: str = "auto",
        num_threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        verify: bool = True,
    ) -> Predictor:
        """Load an artifact directory (offline; no network).

        Args:
            directory: a model artifact directory (see ``model.artifact``).
            runtime: ``"torch"``, an ONNX variant name recorded in the artifact, or ``"auto"``
                (the fastest variant that passed its accuracy gate, else torch).
            num_threads: intra-op threads of the runtime's forward passes; None uses
                ``model.runtimes.default_num_threads()`` (``$ADRISK_THREADS``, else every usable CPU).
            verify: check the weights' sha256 against ``adrisk.json``.

        Raises:
            ArtifactError: not an artifact, bad metadata, or weights that fail their checksum.
            ValueError: an unknown runtime name.
        """
        from transformers import AutoTokenizer

        directory = Path(directory)
        meta = load_meta(directory)
        if verify:
            verify_weights(directory, meta)
        if not num_threads:
            from model.runtimes import default_num_threads

            num_threads = default_num_threads()
        check_model_files(directory, meta)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:  # a corrupt tokenizer file fails deep inside transformers/tokenizers
            raise ArtifactError(f"{directory}: cannot load the tokenizer ({type(e).__name__}: {e})") from e
        encoder = TextEncoder(tokenizer, meta.max_length, meta.identity_mask)
        rt = select_runtime(directory, meta, runtime, num_threads)
        blend = TfidfBlend.load(directory, meta.blend) if meta.blend else None
        predictor = cls(encoder, rt, meta, batch_size=batch_size, max_tokens=max_tokens, blend=blend)
        predictor.directory = directory
        logger.info("loaded model %s (%s runtime, labels %s)", directory, rt.name, list(meta.labels))
        return predictor

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    def _logits(self, enc: Encoded) -> np.ndarray:
        n = len(enc.input_ids)
        out = np.zeros((n, self.meta.label_schema.num_labels), dtype=np.float32)
        if getattr(self.runtime, "per_row", False) and n:  # int8: every row alone, all at once
            out[:] = self.runtime.logits_rows(enc.input_ids)  # type: ignore[attr-defined]
            return out
        for idx in length_sorted_batches(enc.lengths(), self.batch_size, self.max_tokens):
            ids, mask = self.encoder.pad([enc.input_ids[i] for i in idx])
            out[idx] = self.runtime.logits(ids, mask)
        return out

    def _encoder_thread(self) -> ThreadPoolExecutor:
        """One worker thread, made once per process (threads do not survive ``fork``), that runs the
        encoder while the calling thread computes the TF-IDF blend's features."""
        if self._encoder_pool is None or self._encoder_pool_pid != os.getpid():
            self._encoder_pool = ThreadPoolExecutor(1, thread_name_prefix="adrisk-encoder")
            self._encoder_pool_pid = os.getpid()
        return self._encoder_pool

    def score(self, texts: Sequence[str]) -> Scores:
        """Score texts in input order.

        Args:
            texts: a str or a sequence of str (the empty string is scored like any other).

        Raises:
            TypeError: an item is not a str (the message names its index, never its content).
        """
        texts = check_texts(texts)
        with self._lock:
            enc = self.encoder.encode(texts)
            if self.blend is not None and self.blend.weights:  # the stacked TF-IDF model (model/blend.py)
                # The TF-IDF features (Python, holding the GIL) are computed while the runtime's
                # threads (which release it) run the encoder (docs/generalisation.md §6 measures the gain).
                pending = self._encoder_thread().submit(self._logits, enc)
                # the encoder masks identity terms itself; the blend's features see the same text
                mask = self.meta.identity_mask
                tfidf = self.blend.tfidf_logits(mask.apply(texts) if mask is not None else texts)
                logits = self.blend.apply(pending.result(), tfidf)
            else:
                logits = self._logits(enc)
        probs = calibrated_probabilities(logits, self.meta.temperatures, self.meta.label_schema.problem_type)
        flagged = ((probs >= self._thresholds[None, :]) & self._flaggable[None, :]).any(axis=1)
        return Scores(logits, probs, flagged, np.asarray(enc.truncated, dtype=bool))

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, L) float32 logits of the runtime alone: before the TF-IDF blend and temperatures
        (what a variant's own calibration is fitted on).

        Raises:
            TypeError: an item is not a str.
        """
        texts = check_texts(texts)
        with self._lock:
            return self._logits(self.encoder.encode(texts))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, (n, L) float64, columns in ``labels`` order."""
        return self.score(texts).probabilities

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One ``Prediction`` per text, in input order."""
        s = self.score(texts)
        results = []
        for i in range(len(s.flagged)):
            scores = {n: float(s.probabilities[i, j]) for j, n in enumerate(self.labels)}
            cats = {n: bool(s.probabilities[i, j] >= self._thresholds[j]) for j, n in enumerate(self.labels)}
            results.append(Prediction(bool(s.flagged[i]), cats, scores, bool(s.truncated[i])))
        return results


# Every Predictor of this process, so a forked child can re-create their locks: a fork copies only the
# forking thread, so a lock another thread held inside ``score`` at that moment stays held forever in
# the child (POSIX pthread_atfork's problem; Python's own locks in logging and threading are reset the
# same way).
_LIVE_PREDICTORS: weakref.WeakSet[Predictor] = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    for predictor in list(_LIVE_PREDICTORS):
        predictor._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


# any one of these is a tokenizer (without them transformers builds an empty vocabulary silently)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def check_model_files(directory: Path, meta: ArtifactMeta) -> None:
    """Check that config.json and the tokenizer are present and agree with ``adrisk.json``.

    Raises:
        ArtifactError: config.json missing or unreadable, its label count or position window
            disagreeing with ``adrisk.json``, or no tokenizer file.
    """
    import json

    from model.artifact import CONFIG_FILE

    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise ArtifactError(f"{directory}: no tokenizer files (one of {list(TOKENIZER_FILES)})")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{directory / CONFIG_FILE}: missing or invalid ({type(e).__name__}: {e})") from e
    n = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels")
    if n is not None and n != len(meta.labels):
        raise ArtifactError(
            f"{directory}: {CONFIG_FILE} has {n} labels but adrisk.json has {len(meta.labels)}"
        )
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and n == len(meta.labels):
        try:
            names = [str(id2label.get(str(j), id2label.get(j))) for j in range(n)]
        except TypeError:
            names = []
        if names != [f"LABEL_{j}" for j in range(n)] and names != list(meta.labels):
            # the output order the model was trained with differs: scores would go to the wrong labels
            raise ArtifactError(
                f"{directory}: {CONFIG_FILE} id2label {names} does not match adrisk.json labels "
                f"{list(meta.labels)}"
            )
    window = config.get("max_position_embeddings")
    if isinstance(window, int) and meta.max_length > window:
        raise ArtifactError(
            f"{directory}: adrisk.json max_length {meta.max_length} exceeds the model's {window} positions"
        )
