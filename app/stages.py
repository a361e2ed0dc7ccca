"""Which module serves, trains and evaluates each service of cascade.topology: the application
layer's half of the topology (the shared library may not name the gateway or the stages).

Every module here has `main(argv) -> int | None`; `cascade serve|train|eval <stage>` and the local
stack (`python -m <server module>`) reach them through these tables.
"""

from __future__ import annotations

SERVER_MODULES = {
    "gateway": "gateway.server",
    "recall": "services.recall.server",
    "prerank": "services.prerank.server",
    "rank": "services.rank.server",
    "rerank": "services.rerank.server",
}
TRAIN_MODULES = {
    "recall": "services.recall.train",
    "rank": "training.rank_train",
    "prerank": "training.prerank_train",
    "rerank": "services.rerank.train",
}
# Offline reports: each stage's own, plus the extra studies and the end-to-end evaluation.
EVALUATE_MODULES = {
    "recall": "services.recall.evaluate",
    "two-tower": "services.recall.evaluate_two_tower",
    "prerank": "training.prerank_evaluate",
    "rank": "training.rank_evaluate",
    "rank-seeds": "training.rank_evaluate_seeds",
    "rerank": "services.rerank.evaluate",
    "cascade": "app.eval_cascade",
}
