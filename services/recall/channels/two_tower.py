"""Two-tower ANN channel: the user tower in ONNX Runtime, then a FAISS inner-product search.

Per request: the user's profile rows from the feature store plus the context's recent items (the
request's own and the store's history, newest first) padded to the spec's history length give
one user vector; the index returns the k nearest items. No torch here.

Items uploaded after the bundle was built are added without retraining: the item tower (ONNX)
gives each its vector from its creator, categories and content vector (its id is unknown to the
model), and a small exact index of those vectors is searched beside the bundle's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np
import onnxruntime as ort

from cascade.artifacts import ArtifactError, Bundle
from cascade.feature_store import FeatureStore
from cascade.features import FeatureSpec
from services.recall.channels import RecallContext, empty
from services.recall.index import IndexSettings, load_index, search

# The artifact names export.py writes; defined here because export.py imports torch and
# serving must not (the serving image has no torch).
COMPONENT = "recall"
USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
ITEM_VECTORS = "item_vectors.npz"
ITEM_INDEX = "item_index.faiss"
INFO = "two_tower.json"


@dataclass(frozen=True)
class TwoTowerSettings:
    # One intra-op thread per process: for one query at a time more threads only add hand-off
    # cost, and the process runs beside others (bench/recall_rpc.py measures the channel).
    onnx_threads: int = 1
    faiss_threads: int = 1  # single queries: OpenMP threads only add overhead
    max_k: int = 2_000  # most results per request (each searches as wide as its own k)
    index: IndexSettings = IndexSettings()


class TwoTowerChannel:
    name = "two_tower"

    def __init__(
        self,
        session: ort.InferenceSession,
        index: faiss.Index,
        spec: FeatureSpec,
        store: FeatureStore,
        settings: TwoTowerSettings,
        item_session: ort.InferenceSession | None = None,
    ):
        self.session, self.index, self.spec, self.store = session, index, spec, store
        self.settings = settings
        self.item_session = item_session
        # Uploads since the bundle: (ids (m,), vectors (m, dim)), replaced whole on growth.
        self.covered = index.ntotal + 1  # item ids below this are in the bundle's index
        self.uploads = (np.zeros(0, np.int64), np.zeros((0, index.d), np.float32))
        self._grow_lock = threading.Lock()
        self.user_fields = tuple(f.name for f in spec.of("user"))
        self.history_field = spec.of("history")[0].name
        faiss.omp_set_num_threads(settings.faiss_threads)

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, store: FeatureStore, settings: TwoTowerSettings | None = None
    ) -> TwoTowerChannel:
        """Loads and checks the artifacts; ArtifactError/ValueError names what is wrong."""
        settings = settings or TwoTowerSettings()
        info = bundle.load_json(COMPONENT, INFO)
        where = f"{bundle.folder / COMPONENT / INFO}"
        spec = FeatureSpec.from_json(info["feature_spec"])
        if spec.fingerprint != info["feature_spec_fingerprint"]:
            raise ArtifactError(f"{where}: feature_spec does not match its fingerprint")
        # The store encodes features with its spec; the towers were trained on the bundle's.
        spec.check_matches(store.spec, f"{where} (two-tower feature spec vs the feature store's)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.onnx_threads
        options.inter_op_num_threads = 1
        session = _session(bundle, USER_TOWER, options)
        expected = [*(f.name for f in spec.of("user")), *(f.name for f in spec.of("history"))]
        names = [node.name for node in session.get_inputs()]
        if names != expected:
            tower = bundle.folder / COMPONENT / USER_TOWER
            raise ArtifactError(f"{tower}: inputs {names} do not match the spec's {expected}")
        item_session = None
        if ITEM_TOWER in info.get("files", []):  # a bundle without it serves its own items only
            item_session = _session(bundle, ITEM_TOWER, options)
            expected = [f.name for f in spec.of("item")]
            names = [node.name for node in item_session.get_inputs()]
            if names != expected:
                tower = bundle.folder / COMPONENT / ITEM_TOWER
                raise ArtifactError(f"{tower}: inputs {names} do not match the spec's {expected}")
        index = load_index(bundle.file(COMPONENT, ITEM_INDEX))
        if index.d != info["dim"] or index.ntotal != info["n_items"] - 1:
            raise ArtifactError(
                f"{bundle.folder / COMPONENT / ITEM_INDEX}: {index.ntotal} vectors of dim "
                f"{index.d}, expected {info['n_items'] - 1} of dim {info['dim']}"
            )
        return cls(session, index, spec, store, settings, item_session)

    def item_vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """(m, dim) vectors of items as the store holds them, from the item tower with the id
        unknown (how the model was trained to score an item it has no plays of)."""
        assert self.item_session is not None  # add_uploads checks it
        features = self.store.item_features(item_ids)
        feeds = {f.name: features[f.name] for f in self.spec.of("item")}
        feeds["item_id"] = np.zeros(len(item_ids), np.int64)
        return self.item_session.run(None, feeds)[0].astype(np.float32)

    def add_uploads(self) -> None:
        """Gives the items the store holds beyond the bundle's index their vectors (once)."""
        if self.item_session is None or self.store.n_items <= self.covered:
            return
        with self._grow_lock:
            n = self.store.n_items
            ids = np.arange(self.covered, n, dtype=np.int64)
            ids = ids[self.store.known_items(ids)]
            if len(ids):
                known_ids, vectors = self.uploads
                self.uploads = (
                    np.concatenate([known_ids, ids]),
                    np.vstack([vectors, self.item_vectors(ids)]),
                )
            self.covered = n

    def user_vector(self, user_id: int, recent_items: np.ndarray) -> np.ndarray:
        """(1, dim) float32 user vector from the profile and the newest recent items."""
        features = self.store.user_features(np.array([user_id], dtype=np.int64))
        length = self.spec.history_length
        recent = np.asarray(recent_items, dtype=np.int64)[:length]
        history = np.zeros((1, length), dtype=np.int64)
        history[0, : len(recent)] = recent
        # Ids outside the trained vocabulary map to the padding row, like encode_field does.
        vocab = self.spec.field(self.history_field).vocab_size
        history[(history < 0) | (history >= vocab)] = 0
        feeds = {name: features[name] for name in self.user_fields}
        feeds[self.history_field] = history
        return self.session.run(None, feeds)[0]

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product with the user vector, best first."""
        has_history = len(context.recent_items) > 0
        if k <= 0 or (context.user_id <= 0 and not has_history):
            return empty()  # anonymous and no history: nothing personal to say
        k = min(k, self.settings.max_k)
        vector = self.user_vector(context.user_id, context.recent_items)
        ids, scores = search(self.index, vector, k, self.settings.index)
        found = ids[0] > 0
        ids, scores = ids[0][found].astype(np.int64), scores[0][found]
        self.add_uploads()
        upload_ids, upload_vectors = self.uploads
        if not len(upload_ids):
            return ids, scores
        ids = np.concatenate([ids, upload_ids])
        scores = np.concatenate([scores, (upload_vectors @ vector[0]).astype(np.float32)])
        best = np.argsort(-scores, kind="stable")[:k]
        return ids[best], scores[best]


def _session(bundle: Bundle, name: str, options: ort.SessionOptions) -> ort.InferenceSession:
    path = bundle.file(COMPONENT, name)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a bad model
        raise ArtifactError(f"{path} is not a loadable ONNX model: {error}") from None
