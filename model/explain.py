"""Per-label explanations: which words of an ad moved a label's score, as character spans of the
ORIGINAL text (what a client shows), with signed contributions.

Pipeline (the same text and tokens the ``Predictor`` scores):

1. ``normalize_with_offsets`` returns exactly ``normalize_text(text)`` plus, for each normalised
   character, the span of original characters it came from (HTML tags/entities, NFKC, removed
   zero-width characters and spelled-out emoji all change offsets).
2. The normalised text is cut and tokenised exactly like ``TextEncoder.encode`` (same ids), with the
   fast tokenizer's offsets.
3. Tokens are grouped into *units*: white-space separated words of the normalised text, merged when
   they come from the same original characters (an emoji spelled out as ``kiss mark`` is one unit,
   the emoji). Units beyond the model window get no attribution.
4. Attribution per unit and label, in **calibrated logit space**: ``z_j / T_j`` for multi-label and
   binary models (the log-odds whose sigmoid is the calibrated probability the thresholds apply to),
   ``log softmax(z / T)_j`` (calibrated log-probability) for multi-class models. Positive = the unit
   pushes the label up.

Methods (see docs/explanations.md for the measured faithfulness and cost that chose the default; the
deletion test that measures faithfulness is ``bench/explain_faithfulness.py``, the data-set ranking of
attributed words ``training/explain_report.py``):

- ``occlusion`` (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks";
  word-level leave-one-out as in Li et al. 2016, "Understanding Neural Networks through Representation
  Erasure"): a unit's attribution is the drop of the label's calibrated logit when the unit's tokens
  are deleted from the sequence. One forward pass per unit (+1), all labels at once, any runtime
  (torch or ONNX), so it is the default.
- ``integrated_gradients`` (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks"), via
  captum's ``LayerIntegratedGradients`` on the word-embedding layer, baseline = ``[PAD]`` tokens
  with ``[CLS]``/``[SEP]`` kept; token attributions (summed over the embedding dimension) are summed
  per unit. Needs gradients, so it runs the artifact's torch weights even when the predictor scores
  with an ONNX variant (a torch copy of the model is loaded for it: the student's weights, ``student/``,
  when a distilled student variant scores).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.artifact import ArtifactError
from model.encoding import CHARS_PER_TOKEN_CAP
from model.normalize import normalize_with_offsets
from model.predictor import check_texts
from model.schema import ProblemType

logger = logging.getLogger(__name__)

METHODS = ("occlusion", "integrated_gradients")
DEFAULT_METHOD = "occlusion"
DEFAULT_TOP_K = 5
DEFAULT_IG_STEPS = 32

# ---------------------------------------------------------------------------------------------------
# units: words of the normalised text mapped to original spans, and their tokens
# ---------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Span:
    """One highlighted span: ``text[start:end]`` of the original text; ``score`` is the signed
    contribution to the label's calibrated logit (see module docstring)."""

    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "score": self.score}


@dataclass
class Units:
    """A text cut into attribution units.

    ``spans``: (U, 2) original-text offsets; ``token_unit``: (T,) unit index of each token of
    ``input_ids`` (-1 for special tokens); ``input_ids``: the ids ``TextEncoder.encode`` produces.
    """

    spans: np.ndarray
    token_unit: np.ndarray
    input_ids: list[int]
    special: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def active(self) -> np.ndarray:
        """Indices of units that have at least one token inside the model window."""
        return np.unique(self.token_unit[self.token_unit >= 0])


def text_units(text: str, tokenizer, max_length: int) -> Units:
    """Tokenise ``text`` like ``TextEncoder.encode`` and group tokens into units (see module docstring).

    Args:
        text: the original text.
        tokenizer: a Hugging Face fast tokenizer (needs ``return_offsets_mapping``).
        max_length: the model window in tokens.
    """
    norm, offsets = normalize_with_offsets(text)
    cap = max_length * CHARS_PER_TOKEN_CAP
    cut = norm[:cap]
    words = [(m.start(), m.end()) for m in _WORD.finditer(cut)]
    # merge consecutive words that come from overlapping original characters (a spelled-out emoji)
    spans: list[list[int]] = []
    char_unit = np.full(len(cut), -1, dtype=np.int64)
    for a, b in words:
        lo, hi = int(offsets[a, 0]), int(offsets[b - 1, 1])
        if spans and lo < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
        char_unit[a:b] = len(spans) - 1
    enc = tokenizer(
        cut,
        truncation=True,
        max_length=max_length,
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        verbose=False,
    )
    ids = list(enc["input_ids"])
    special = np.asarray(enc["special_tokens_mask"], dtype=bool)
    token_offsets = enc["offset_mapping"]
    token_unit = np.full(len(ids), -1, dtype=np.int64)
    for t, (a, b) in enumerate(token_offsets):
        if special[t] or b <= a:
            continue
        token_unit[t] = char_unit[a] if char_unit[a] >= 0 else char_unit[min(b - 1, len(cut) - 1)]
    return Units(np.asarray(spans, dtype=np.int64).reshape(-1, 2), token_unit, ids, special)


# ---------------------------------------------------------------------------------------------------
# the explainer
# ---------------------------------------------------------------------------------------------------


@dataclass
class Attribution:
    """All unit attributions of one text: ``spans`` (U, 2) original offsets, ``scores`` (U, L) float64
    (0 for units outside the model window), ``active`` the units inside the window."""

    spans: np.ndarray
    scores: np.ndarray
    active: np.ndarray

    def top(self, label_index: int, k: int) -> list[Span]:
        """The ``k`` units with the largest |score| for a label, strongest first (signed scores)."""
        if k < 1 or self.active.size == 0:
            return []
        s = self.scores[self.active, label_index]
        order = np.argsort(-np.abs(s), kind="stable")[:k]
        return [
            Span(int(self.spans[self.active[i], 0]), int(self.spans[self.active[i], 1]), float(s[i]))
            for i in order
        ]


class Explainer:
    """Per-label word attributions for a loaded ``Predictor``.

    Args:
        predictor: a ``model.predictor.Predictor`` (any runtime).
        method: ``"occlusion"`` (any runtime) or ``"integrated_gradients"`` (captum; torch weights).
        ig_steps: Riemann steps of integrated gradients.
        batch_size: rows per forward pass of the occluded copies / IG steps.
        before_batch: optional callable run before each forward pass (a server passes one that waits
            while plain scoring requests are queued, so explanations only use idle time).

        lock_forward: take the predictor's lock around each forward pass (default). Tokenisation always
            takes it (fast tokenizers are not thread-safe). ``False`` lets a plain scoring batch run
            concurrently with an explanation's forward pass instead of waiting for it: safe for both
            runtimes (a torch module in inference mode and an ONNX Runtime session may be called from
            several threads); the server uses it.

    Thread-safety: with the lock, one batch at a time, so plain scoring interleaves with a long
    explanation instead of waiting for all of it.

    Raises:
        ValueError: an unknown method.
    """

    def __init__(
        self,
        predictor,
        method: str = DEFAULT_METHOD,
        ig_steps: int = DEFAULT_IG_STEPS,
        batch_size: int = 32,
        before_batch=None,
        lock_forward: bool = True,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; choose one of {list(METHODS)}")
        if ig_steps < 2 or batch_size < 1:
            raise ValueError("ig_steps must be >= 2 and batch_size >= 1")
        self.predictor = predictor
        self.method = method
        self.ig_steps = int(ig_steps)
        self.batch_size = int(batch_size)
        self.before_batch = before_batch
        meta = predictor.meta
        self.labels = tuple(meta.labels)
        self._temps = np.asarray(meta.temperatures, dtype=np.float64)
        # With a TF-IDF blend (model/blend.py) a label's score is w_model * transformer logit + the
        # TF-IDF part: attributions cover the transformer's share, so its logits are scaled by w_model.
        blend = getattr(predictor, "blend", None)
        self._model_weight = np.asarray(
            [
                blend.weights[n].model if blend is not None and n in blend.weights else 1.0
                for n in self.labels
            ],
            dtype=np.float64,
        )
        self._multi_class = meta.label_schema.problem_type is ProblemType.MULTI_CLASS
        self._torch_model = None
        self._lock = getattr(predictor, "_lock", None)
        self._forward_lock = self._lock if lock_forward else None

    # -- score space --------------------------------------------------------------------------------
    def _space(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64) / self._temps[None, :]
        if self._multi_class:
            z = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
        return z

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        enc = self.predictor.encoder
        out = []
        for i in range(0, len(rows), self.batch_size):
            ids, mask = enc.pad(rows[i : i + self.batch_size])
            if self.before_batch is not None:
                self.before_batch()
            if self._forward_lock is not None:
                with self._forward_lock:
                    out.append(self.predictor.runtime.logits(ids, mask))
            else:
                out.append(self.predictor.runtime.logits(ids, mask))
        return self._space(np.concatenate(out, axis=0) * self._model_weight[None, :])

    def _units(self, text: str) -> Units:
        tok = self.predictor.encoder.tokenizer
        if self._lock is not None:
            with self._lock:
                return text_units(text, tok, self.predictor.meta.max_length)
        return text_units(text, tok, self.predictor.meta.max_length)

    # -- methods ------------------------------------------------------------------------------------
    def _occlusion(self, u: Units) -> np.ndarray:
        active = u.active
        scores = np.zeros((len(u.spans), len(self.labels)), dtype=np.float64)
        if active.size == 0:
            return scores
        ids = np.asarray(u.input_ids)
        rows = [u.input_ids] + [ids[u.token_unit != k].tolist() for k in active]
        z = self._forward(rows)
        scores[active] = z[0][None, :] - z[1:]
        return scores

    def _load_torch(self):
        if self._torch_model is None:
            rt = self.predictor.runtime
            if getattr(rt, "name", "") == "torch" and hasattr(rt, "model"):
                self._torch_model = rt.model
            else:
                if self.predictor.directory is None:
                    raise ValueError(
                        "integrated gradients need the artifact's torch weights (predictor has no directory)"
                    )
                from transformers import AutoModelForSequenceClassification

                # the weights of the model that scores: the student's for a student variant
                weights = Path(self.predictor.directory) / getattr(rt, "torch_subdir", "")
                if not (weights / "config.json").is_file():
                    raise ArtifactError(f"{weights}: no torch weights for runtime {rt.name!r}")
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(weights), local_files_only=True
                )
                self._torch_model = model.eval()
        return self._torch_model

    def _integrated_gradients(self, u: Units, label_idx: Sequence[int]) -> np.ndarray:
        import torch
        from captum.attr import LayerIntegratedGradients

        model = self._load_torch()
        scores = np.zeros((len(u.spans), len(self.labels)), dtype=np.float64)
        active = u.active
        if active.size == 0 or not label_idx:
            return scores
        temps = torch.as_tensor(self._temps / self._model_weight, dtype=torch.float32)
        multi_class = self._multi_class

        def fwd(input_ids, attention_mask):
            z = model(input_ids=input_ids, attention_mask=attention_mask).logits / temps
            return torch.log_softmax(z, dim=1) if multi_class else z

        lig = LayerIntegratedGradients(fwd, model.get_input_embeddings())
        ids = torch.as_tensor([u.input_ids], dtype=torch.long)
        pad = self.predictor.encoder.pad_id
        base = torch.where(torch.as_tensor(u.special)[None, :], ids, torch.full_like(ids, pad))
        mask = torch.ones_like(ids)
        n = len(label_idx)
        unit_of = torch.as_tensor(u.token_unit)
        if self.before_batch is not None:
            self.before_batch()
        with torch.enable_grad():
            if self._forward_lock is not None:
                self._forward_lock.acquire()
            try:
                attr = lig.attribute(
                    inputs=ids.repeat(n, 1),
                    baselines=base.repeat(n, 1),
                    additional_forward_args=(mask.repeat(n, 1),),
                    target=list(label_idx),
                    n_steps=self.ig_steps,
                    internal_batch_size=max(self.batch_size, 1),
                )
            finally:
                if self._forward_lock is not None:
                    self._forward_lock.release()
        tok = attr.sum(dim=-1).detach().double()  # (n, T)
        for r, j in enumerate(label_idx):
            keep = unit_of >= 0
            per_unit = torch.zeros(len(u.spans), dtype=torch.float64)
            per_unit.index_add_(0, unit_of[keep], tok[r][keep])
            scores[:, j] = per_unit.numpy()
        return scores

    # -- public -------------------------------------------------------------------------------------
    def attribute(self, texts: Sequence[str], labels: Sequence[str] | None = None) -> list[Attribution]:
        """Unit attributions of each text for ``labels`` (default: all labels; occlusion always computes
        all labels at the cost of one set of forward passes, IG costs one pass set per label).

        Raises:
            TypeError: an item is not a str (the message names its index, never its content).
            ValueError: an unknown label name.
        """
        texts = check_texts(texts)
        idx = self._label_indices(labels)
        out = []
        for t in texts:
            u = self._units(t)
            s = self._occlusion(u) if self.method == "occlusion" else self._integrated_gradients(u, idx)
            out.append(Attribution(u.spans, s, u.active))
        return out

    def explain(
        self, texts: Sequence[str], labels: Sequence[str] | None = None, top_k: int = DEFAULT_TOP_K
    ) -> list[dict[str, list[Span]]]:
        """Top-``top_k`` spans per label for each text: ``{label: [Span, ...]}`` strongest |score| first.

        Args:
            texts: a str or a sequence of str.
            labels: the labels to explain for every text; None explains each text's flagged labels
                (calibrated probability at or above the label's threshold; a text with none gets ``{}``).
            top_k: spans per label, >= 1.

        Raises:
            TypeError: an item is not a str. ValueError: unknown label, top_k < 1.
        """
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        texts = check_texts(texts)
        if labels is None:
            preds = self.predictor.predict(texts)
            benign = self.predictor.meta.label_schema.benign_label
            wanted = [[n for n in self.labels if p.categories[n] and n != benign] for p in preds]
        else:
            self._label_indices(labels)
            wanted = [list(labels)] * len(texts)
        results: list[dict[str, list[Span]]] = []
        for t, names in zip(texts, wanted, strict=True):
            if not names:
                results.append({})
                continue
            a = self.attribute([t], names)[0]
            results.append({n: a.top(self.labels.index(n), top_k) for n in names})
        return results

    def explain_json(
        self, texts: Sequence[str], labels: Sequence[str] | None = None, top_k: int = DEFAULT_TOP_K
    ) -> list[dict[str, list[dict]]]:
        """``explain`` as JSON-ready dicts: ``[{label: [{"start", "end", "score"}, ...]}, ...]`` (the
        HTTP API's, ``adrisk predict --explain``'s and ``adrisk score --explain``'s shape)."""
        return [
            {n: [s.to_dict() for s in spans] for n, spans in r.items()}
            for r in self.explain(texts, labels=labels, top_k=top_k)
        ]

    def _label_indices(self, labels: Sequence[str] | None) -> list[int]:
        if labels is None:
            return list(range(len(self.labels)))
        if isinstance(labels, str):
            raise TypeError("labels must be a sequence of label names, not a str")
        unknown = [n for n in labels if n not in self.labels]
        if unknown:
            raise ValueError(f"unknown labels {unknown}; this model has {list(self.labels)}")
        return [self.labels.index(n) for n in labels]
