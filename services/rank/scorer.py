"""The ranker at serving time: ONNX Runtime over feature-store rows, no torch.

`RankScorer.score` scores one request's candidates; `RankScorer.label` scores many (user, item,
time) rows in large batches for offline teacher labelling (the pre-ranker distils from it). Both
build rows with cascade.rows, the code training used, and run the same ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from cascade import providers
from cascade.artifacts import ArtifactError, Bundle
from cascade.context_fields import MFPositions, OfflineContext, encode_context
from cascade.data.schema import Table
from cascade.feature_store import FeatureStore
from cascade.features import FeatureSpec, history_before
from cascade.rows import Rows, assemble, input_names, online_rows, store_items

COMPONENT = "rank"


class SpecMismatch(ArtifactError):
    """The artifact was trained on a feature spec that differs from the data's."""


@dataclass(frozen=True)
class ScorerSettings:
    intra_op_threads: int = 1  # scale with processes (bench/rank_scoring.py)
    fusion_weights: tuple[float, ...] = ()  # per task, in the artifact's task order; () = its own
    # "auto": CUDA when present (the `gpu` extra), else CPU; a missing provider falls back to CPU.
    execution_provider: str = providers.CPU

    def __post_init__(self) -> None:
        if self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")


class RankScorer:
    def __init__(
        self,
        session: ort.InferenceSession,
        store: FeatureStore,
        tasks: tuple[str, ...],
        fusion_weights: np.ndarray,
        version: str,
        one_user_row: bool = False,
        mf: MFPositions | None = None,
        channel_feature: bool = False,
    ):
        self.session, self.store, self.tasks, self.version = session, store, tasks, version
        self.one_user_row = one_user_row  # the model broadcasts one user row (newer bundles)
        # The context fields the model was trained with: mf_position only with the MF model it
        # was trained on, channel tags and positions only when its examples carried them (else
        # they stay 0, as in training: a value it never saw would mean nothing to it).
        self.mf, self.channel_feature = mf, channel_feature
        self.items = store_items(store)
        self.fusion_weights = fusion_weights.astype(np.float32).reshape(-1, 1)  # (T, 1)
        # The graph's own inputs: the exporter drops fields the model does not read (context
        # fields left out by ModelConfig.context_fields), so only these are fed.
        self.input_names = [i.name for i in session.get_inputs()]
        self.output = session.get_outputs()[0].name

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, store: FeatureStore, settings: ScorerSettings | None = None
    ) -> RankScorer:
        """Loads the rank component; raises SpecMismatch when its feature spec is not the
        store's (the model's embedding rows would mean other things)."""
        settings = ScorerSettings() if settings is None else settings
        info = bundle.component(COMPONENT)
        trained = FeatureSpec.from_json(bundle.file(COMPONENT, "feature_spec.json").read_text())
        if trained.fingerprint != info["feature_spec_fingerprint"]:
            raise ArtifactError(f"{bundle.folder}: rank feature_spec.json does not match manifest")
        try:
            trained.check_matches(store.spec, f"rank artifact {bundle.version}")
        except ValueError as error:
            raise SpecMismatch(
                f"refusing to serve: the rank artifact {bundle.version} was trained on feature "
                f"spec {trained.fingerprint}, the data's spec is {store.spec.fingerprint} "
                f"({error}); retrain with `python -m training.rank_train` on this data"
            ) from None
        meta = bundle.load_json(COMPONENT, "rank.json")
        tasks = tuple(meta["tasks"])
        if list(meta["inputs"]) != list(input_names(store.spec)):
            raise SpecMismatch(f"rank artifact inputs {meta['inputs']} are not the spec's fields")
        weights = np.array([meta["fusion_weights"][t] for t in tasks], dtype=np.float32)
        if settings.fusion_weights:
            if len(settings.fusion_weights) != len(tasks):
                raise ValueError(
                    f"fusion_weights has {len(settings.fusion_weights)} values; the model has "
                    f"tasks {tasks}"
                )
            weights = np.array(settings.fusion_weights, dtype=np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(bundle.file(COMPONENT, "model.onnx")),
            options,
            providers=providers.session_providers(settings.execution_provider, stage=COMPONENT),
        )
        one_user_row = bool(meta.get("one_user_row", False))
        mf = MFPositions.from_bundle(bundle) if meta.get("mf_feature") else None
        if meta.get("mf_feature") and mf is None:
            raise ArtifactError(f"{bundle.folder}: the ranker reads mf_position; no MF model")
        channel_feature = bool(meta.get("channel_feature", False))
        version = bundle.version
        return cls(session, store, tasks, weights, version, one_user_row, mf, channel_feature)

    def probabilities(self, rows: Rows) -> np.ndarray:
        """(n, n_tasks) task probabilities for encoded rows."""
        if not len(rows["item_id"]):
            return np.zeros((0, len(self.tasks)), dtype=np.float32)
        return self.session.run([self.output], {n: rows[n] for n in self.input_names})[0]

    def fuse(self, probabilities: np.ndarray) -> np.ndarray:
        """The ranking score: the configured weighted sum of task probabilities, (n,)."""
        return (probabilities @ self.fusion_weights)[:, 0]

    def score(
        self,
        user_id: int,
        item_ids: np.ndarray,
        history: np.ndarray | None = None,
        channel_masks: np.ndarray | None = None,
        channel_positions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(fused scores (n,), probabilities (n, n_tasks)) for one user's candidates, in the
        given order. `history`: recent items newest first, put before the stored history;
        `channel_masks`, `channel_positions`: the recall channels that found each candidate and
        its best position in their answers."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        masks = channel_masks if self.channel_feature else None
        positions = channel_positions if self.channel_feature else None
        if len(self.items.creator) != self.store.n_items:  # items uploaded since: their context
            self.items = store_items(self.store)  # (age, affinities) from their own metadata
        rows = online_rows(
            self.store,
            user_id,
            item_ids,
            history,
            self.one_user_row,
            masks,
            self.mf,
            self.items,
            positions,
        )
        probabilities = self.probabilities(rows)
        return self.fuse(probabilities), probabilities

    def label(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        ts: np.ndarray,
        interactions: Table,
        batch_size: int = 32_768,
    ) -> np.ndarray:
        """(n, n_tasks) teacher probabilities for many (user, item, time) rows.

        History is what `interactions` (the training log) held strictly before each row's time,
        as in training. Rows go through ONNX Runtime in batches of `batch_size` (large batches
        amortise ONNX Runtime's per-run cost; inputs are ~0.5 KB of int64 per row, so 32k rows
        are ~16 MB at a time, whatever n is); the output is one preallocated (n, n_tasks) array.
        Throughput is measured by bench/rank_scoring.py ("teacher labelling rows/s").
        """
        user_ids = np.asarray(user_ids, dtype=np.int64)
        item_ids = np.asarray(item_ids, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        log = {k: interactions[k] for k in ("user_id", "item_id", "ts", "play")}
        context = OfflineContext(self.items, log, self.mf)
        out = np.empty((len(user_ids), len(self.tasks)), dtype=np.float32)
        length = self.store.spec.history_length
        for start in range(0, len(user_ids), batch_size):
            part = slice(start, start + batch_size)
            history = history_before(log, user_ids[part], ts[part], length)
            values = context.values(user_ids[part], item_ids[part], ts[part], history)
            rows = assemble(
                self.store.spec,
                self.store.user_features(user_ids[part]),
                self.store.item_features(item_ids[part]),
                history,
                context=encode_context(self.store.spec, values),
            )
            out[part] = self.probabilities(rows)
        return out
