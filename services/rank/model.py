"""The ranker (teacher): DeepFM with per-field widths, AutoInt attention and CGC multi-task heads.

    fields ─▶ embeddings (own width each) ─┬─▶ first order (one weight per value)
                                           ├─▶ project to a common width ─┬─▶ FM pairs
                                           │                               └─▶ self-attention
                                           └──────── deep input ◀──────────────┘
    deep input ─▶ CGC (shared + per-task experts, per-task gates) ─▶ tower per task
    task logit = tower + first order + FM;  output: sigmoid per task, (batch, n_tasks)

Each ablation switch (`per_field_widths`, `attention`, `ple`) turns one block off: DeepFM alone is
all three off (common width, shared-bottom MLP with one head per task). `context_fields` picks
which of the spec's context fields (counters, affinities, channel tags, MF position) it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cascade.embeddings import id_table
from cascade.features import FeatureSpec
from cascade.rows import input_names
from services.rank.debias import PositionTower


@dataclass(frozen=True)
class ModelConfig:
    common_width: int = 16  # FM / attention width; also every field's width without per-field
    per_field_widths: bool = True
    attention: bool = True
    attention_heads: int = 2
    ple: bool = True  # CGC experts and gates; off = one shared-bottom MLP
    shared_experts: int = 2
    expert_hidden: int = 128
    expert_width: int = 64
    tower_hidden: int = 32
    # The spec's "context" fields it reads (cascade/context_fields.py): None = all, () = none.
    # By default only the MF position: on ml-100k it lifts NDCG@10 far beyond the seed spread,
    # while counters and affinities lower it (`cascade eval rank-seeds --rows context`).
    context_fields: tuple[str, ...] | None = ("mf_position",)
    # A shallow tower on the shown slot whose per-task logit is added in training only
    # (services/rank/debias.py): the served score (forward, the ONNX graph) never reads it.
    position_tower: bool = False
    position_slots: int = 10  # slots it tells apart; later ones share the last slot's logit
    # Read the item's content vector (the dense "content" field, when the items carry one). Off
    # by default: trained briefly it ranked held-out uploads at 0.757x the ranker without it
    # (`make bench-content-cold-start`); the two-tower's content part is where it helps.
    content: bool = False


class FieldEmbeddings(nn.Module):
    """One embedding per field; multi-hot fields and the history are mean-pooled over non-zero
    ids. The history shares the item_id table: a played item and a candidate are the same thing."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig):
        super().__init__()
        self.names = input_names(spec)
        self.kinds = {f.name: f.kind for f in spec.fields}
        # Ignored inputs (context fields left out by context_fields) stay in the signature.
        chosen = config.context_fields
        self.ignored = {
            f.name for f in spec.of("context") if chosen is not None and f.name not in chosen
        } | {f.name for f in spec.fields if f.kind == "dense" and not config.content}
        self.tables = nn.ModuleDict()
        self.first_order = nn.ModuleDict()
        self.widths = []
        for f in spec.fields:
            if f.name in self.ignored:
                continue
            width = f.width if config.per_field_widths else config.common_width
            if f.kind == "dense":  # the content vector: a projection (zeros, unknown, stay zeros)
                self.tables[f.name] = nn.Linear(f.vocab_size, width, bias=False)
                self.first_order[f.name] = nn.Linear(f.vocab_size, 1, bias=False)
            elif f.kind != "sequence":
                self.tables[f.name] = id_table(f.vocab_size, width)
                self.first_order[f.name] = id_table(f.vocab_size, 1)
            self.widths.append(width)
        for table in (*self.tables.values(), *self.first_order.values()):
            assert isinstance(table, nn.Embedding | nn.Linear)  # what the loop above put in
            nn.init.normal_(table.weight, std=0.01)
            if isinstance(table, nn.Embedding):
                with torch.no_grad():
                    table.weight[0].zero_()

    def forward(self, inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        vectors, first = [], []
        for name, ids in zip(self.names, inputs, strict=True):
            if name in self.ignored:
                continue
            kind = self.kinds[name]
            table = self.tables["item_id" if kind == "sequence" else name]
            if kind in ("multi", "sequence"):
                mask = (ids > 0).unsqueeze(-1).float()  # (b, L, 1)
                count = mask.sum(dim=1).clamp(min=1.0)
                vectors.append((table(ids) * mask).sum(dim=1) / count)
                if kind == "multi":
                    first.append((self.first_order[name](ids) * mask).sum(dim=1) / count)
            else:
                vectors.append(table(ids))
                first.append(self.first_order[name](ids))
        # Serving sends the user's fields and history once (one row) for all of a request's
        # candidates: broadcasting them here computes the user side once, not once per candidate.
        rows = inputs[self.names.index("item_id")].shape[0]
        vectors = [v.expand(rows, -1) for v in vectors]
        first = [f.expand(rows, -1) for f in first]
        return vectors, torch.cat(first, dim=1).sum(dim=1)  # [(b, w_f)], (b,)


class SelfAttention(nn.Module):
    """AutoInt's interacting layer: multi-head attention across fields, with a residual."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.residual = nn.Linear(width, width, bias=False)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:  # (b, F, k) -> (b, F, k)
        b, n_fields, width = fields.shape
        head = width // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (b, F, k) -> (b, h, F, k/h)
            return x.reshape(b, n_fields, self.heads, head).transpose(1, 2)

        q, k, v = split(self.query(fields)), split(self.key(fields)), split(self.value(fields))
        weights = torch.softmax(q @ k.transpose(-1, -2) / head**0.5, dim=-1)  # (b, h, F, F)
        mixed = (weights @ v).transpose(1, 2).reshape(b, n_fields, width)
        return torch.relu(mixed + self.residual(fields))


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, width_out), nn.ReLU()
    )


class CGC(nn.Module):
    """Customized gate control (PLE's extraction layer): each task mixes its own expert and the
    shared experts with a softmax gate over the deep input."""

    def __init__(self, width_in: int, n_tasks: int, config: ModelConfig):
        super().__init__()
        hidden, out = config.expert_hidden, config.expert_width
        self.shared = nn.ModuleList(
            _mlp(width_in, hidden, out) for _ in range(config.shared_experts)
        )
        self.own = nn.ModuleList(_mlp(width_in, hidden, out) for _ in range(n_tasks))
        self.gates = nn.ModuleList(
            nn.Linear(width_in, config.shared_experts + 1) for _ in range(n_tasks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = [expert(x) for expert in self.shared]
        outputs = []
        for own, gate in zip(self.own, self.gates, strict=True):
            experts = torch.stack([own(x), *shared], dim=1)  # (b, 1 + S, out)
            weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # (b, 1 + S, 1)
            outputs.append((experts * weights).sum(dim=1))
        return outputs


class RankModel(nn.Module):
    """Inputs: the spec's fields in `input_names(spec)` order, int64, batch first.
    Output: (batch, n_tasks) task probabilities."""

    def __init__(self, spec: FeatureSpec, tasks: tuple[str, ...], config: ModelConfig):
        super().__init__()
        self.tasks, self.config = tuple(tasks), config
        self.embeddings = FieldEmbeddings(spec, config)
        k = config.common_width
        self.project = nn.ModuleList(
            nn.Identity() if w == k else nn.Linear(w, k, bias=False) for w in self.embeddings.widths
        )
        n_fields = len(self.embeddings.widths)
        deep_in = sum(self.embeddings.widths)
        self.attention = SelfAttention(k, config.attention_heads) if config.attention else None
        if config.attention:
            deep_in += n_fields * k
        if config.ple:
            self.cgc = CGC(deep_in, len(tasks), config)
        else:
            self.bottom = _mlp(deep_in, config.expert_hidden, config.expert_width)
        self.towers = nn.ModuleList(
            nn.Sequential(
                nn.Linear(config.expert_width, config.tower_hidden),
                nn.ReLU(),
                nn.Linear(config.tower_hidden, 1),
            )
            for _ in tasks
        )
        # Added to the logits in training only (services.rank.train.training_logits): `forward`,
        # hence the exported graph and the served score, never reads it.
        self.position_tower = (
            PositionTower(config.position_slots, len(tasks)) if config.position_tower else None
        )

    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        vectors, first_order = self.embeddings(list(inputs))
        fields = torch.stack([p(v) for p, v in zip(self.project, vectors, strict=True)], dim=1)
        total = fields.sum(dim=1)
        fm = 0.5 * (total * total - (fields * fields).sum(dim=1)).sum(dim=1)  # (b,)
        deep = [torch.cat(vectors, dim=1)]
        if self.attention is not None:
            deep.append(self.attention(fields).flatten(start_dim=1))
        deep_in = torch.cat(deep, dim=1)
        if self.config.ple:
            per_task = self.cgc(deep_in)
        else:
            per_task = [self.bottom(deep_in)] * len(self.towers)
        towers = torch.cat([t(h) for t, h in zip(self.towers, per_task, strict=True)], dim=1)
        return towers + (first_order + fm).unsqueeze(1)  # (b, n_tasks)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(*inputs))
