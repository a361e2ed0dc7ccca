"""Id tables above SPARSE_ROWS train sparse (lazy Adam: only the rows a batch touched move);
smaller ones train with plain Adam, every row's moments updated each step."""

import torch
from torch import nn

from cascade import embeddings
from cascade.embeddings import Adam, id_table


class Tables(nn.Module):
    def __init__(self, rows: int):
        super().__init__()
        self.items = id_table(rows, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.items(ids)).sum()


def two_steps(model: Tables) -> torch.Tensor:
    """Item rows after a step on ids 1, 2 then a step on id 3."""
    optimizer = Adam(model, lr=0.1, weight_decay=0.0)
    for ids in ([1, 2], [3]):
        optimizer.zero_grad()
        model(torch.tensor(ids)).backward()
        optimizer.step()
    return model.items.weight.detach()


def test_a_table_above_the_limit_moves_only_the_rows_a_batch_touched(monkeypatch):
    monkeypatch.setattr(embeddings, "SPARSE_ROWS", 5)
    torch.manual_seed(0)
    model = Tables(rows=8)
    assert model.items.sparse and len(Adam(model, 0.1, 0.0).optimizers) == 2
    before = model.items.weight.detach().clone()
    after = two_steps(model)
    changed = (after != before).any(dim=1)
    assert changed.tolist() == [False, True, True, True, False, False, False, False]
    assert (model.head.weight != 0).all()  # the dense part trains with Adam


def test_a_small_table_is_dense_and_adam_keeps_moving_rows_it_saw_before():
    torch.manual_seed(0)
    model = Tables(rows=8)
    assert not model.items.sparse and len(Adam(model, 0.1, 0.0).optimizers) == 1
    optimizer = Adam(model, lr=0.1, weight_decay=0.0)
    optimizer.zero_grad()
    model(torch.tensor([1, 2])).backward()
    optimizer.step()
    row_1 = model.items.weight[1].detach().clone()
    optimizer.zero_grad()
    model(torch.tensor([3])).backward()
    optimizer.step()
    assert (model.items.weight[1] != row_1).any()  # plain Adam's momentum moves row 1 again


def test_sparse_and_dense_agree_on_the_first_step(monkeypatch):
    """Lazy Adam differs from Adam only in rows a step does not touch."""
    torch.manual_seed(0)
    dense = Tables(rows=8)
    monkeypatch.setattr(embeddings, "SPARSE_ROWS", 5)
    sparse = Tables(rows=8)
    sparse.load_state_dict(dense.state_dict())
    for model in (dense, sparse):
        optimizer = Adam(model, lr=0.1, weight_decay=0.0)
        optimizer.zero_grad()
        model(torch.tensor([1, 2, 2])).backward()
        optimizer.step()
    torch.testing.assert_close(sparse.items.weight, dense.items.weight)
