"""iCaRL's herding order, loss, exemplar sets and nearest-mean prediction, against computations
written out here."""

import math

import pytest
import torch
from torch.nn import functional as F

from clight import MLP, ContinualClassifier, RunContext, SplitClasses, TaskSequence
from clight.methods.icarl import ICaRL, herding_order, icarl_loss, nearest_mean_scores, released_code_herding_order

# four unit vectors; mean (0.52, 0.64)
PHI = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.28, 0.96]])


def test_herding_order_worked_out_by_hand():
    # k=1: ||mu - phi||^2 = 0.64, 0.40, 0.08, 0.16 -> 2
    # k=2: ||mu - (phi_2 + phi)/2||^2 = 0.26, 0.04, -, 0.02 -> 3
    # k=3: ||mu - (phi_2 + phi_3 + phi)/3||^2 = 0.0444, 0.0711 -> 0; then 1
    assert herding_order(PHI, 4) == [2, 3, 0, 1]
    assert herding_order(PHI, 2) == [2, 3]
    # the released code: w = mu, take argmax w . phi, w += mu - phi: 2, 3, (2 again), (3 again), 0
    assert released_code_herding_order(PHI, 3) == [2, 3, 0]


def test_herding_matches_the_papers_formula_on_random_features():
    features = F.normalize(torch.randn(40, 6, generator=torch.Generator().manual_seed(0)), dim=1).double()
    mu, chosen = features.mean(0), []
    for k in range(1, 11):  # Algorithm 4 as written, distances in full
        total = features[chosen].sum(0) if chosen else torch.zeros(6, dtype=torch.double)
        distance = (mu - (total + features) / k).norm(dim=1)
        distance[chosen] = math.inf
        chosen.append(int(distance.argmin()))
    assert herding_order(features, 10) == chosen


def test_nearest_mean_scores_by_hand():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    has_mean = torch.tensor([True, True, False])
    features = torch.tensor([[3.0, 1.0], [0.5, 2.0]])  # normalised: (0.949, 0.316), (0.243, 0.970)
    scores = nearest_mean_scores(features, means, has_mean)
    phi = features / features.norm(dim=1, keepdim=True)
    torch.testing.assert_close(scores[:, 0], -((phi - means[0]) ** 2).sum(1))
    assert scores.argmax(1).tolist() == [0, 1] and torch.isinf(scores[:, 2]).all()


def test_icarl_loss_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.3, -0.7, 0.0]])
    old_logits = torch.tensor([[1.0, -2.0, 0.0, 0.0], [0.0, 0.4, 0.0, 0.0]])
    target = torch.tensor([2, 0])
    value = icarl_loss(logits, target, torch.tensor([2, 3]), torch.tensor([0, 1]), old_logits)

    def bce(z, y):
        s = 1 / (1 + math.exp(-z))
        return -(y * math.log(s) + (1 - y) * math.log(1 - s))

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    rows = [
        # old classes 0, 1: the previous model's sigmoid; new classes 2, 3: whether it is the label
        [bce(0.5, sig(1.0)), bce(-1.0, sig(-2.0)), bce(2.0, 1.0), bce(0.0, 0.0)],
        [bce(1.5, sig(0.0)), bce(0.3, sig(0.4)), bce(-0.7, 0.0), bce(0.0, 0.0)],
    ]
    assert value.item() == pytest.approx(sum(map(sum, rows)) / 8, rel=1e-6)
    first = icarl_loss(logits, target, torch.tensor([2, 3]), torch.tensor([], dtype=torch.long), None)
    assert first.item() == pytest.approx((rows[0][2] + rows[0][3] + rows[1][2] + rows[1][3]) / 4, rel=1e-6)


def _features(model, data, task, rows):
    b = data.tasks[task].train.__getitems__(rows)
    with torch.no_grad():
        return F.normalize(model.features(b["input"]), dim=1)


def test_exemplars_reduce_to_the_herding_prefix_and_nearest_means_classify():
    torch.manual_seed(0)
    data = TaskSequence(SplitClasses("digits", num_tasks=2), batch_size=8, seed=0)
    model = ContinualClassifier(MLP([8]))
    model.setup_sequence(data.info)
    icarl = ICaRL(memory_size=40, batch_size=50)
    icarl.check_compatible(model, data, data.info)
    icarl.setup_sequence(model, data, RunContext(seed=0))
    targets = [data.tasks[t].train.targets for t in (0, 1)]
    orders = {}
    for t in (0, 1):
        data.set_task(t)
        model.on_task_start(data.tasks[t])
        icarl.on_task_start(model, data.tasks[t])
        if t:
            with torch.no_grad():  # as if task 1 had been trained
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
        model.on_task_end(data.tasks[t])
        m = 40 // (5 * (t + 1))  # 5 classes a task: 8 exemplars a class, then 4
        for c in data.tasks[t].classes:
            rows = (targets[t] == c).nonzero().flatten()
            orders[c] = rows[herding_order(_features(model, data, t, rows.tolist()), m)].tolist()
        icarl.on_task_end(model, data.tasks[t])
        for c in sorted(orders):
            kept = icarl.memory.entries[icarl.memory.labels == c]
            assert kept[:, 1].tolist() == orders[c][:m], (t, c)  # old classes keep their first m
    assert len(icarl.memory) == 40 and icarl.memory.labels.bincount().tolist() == [4] * 10

    # class means of the exemplars' normalised features, renormalised; the nearest one wins
    means = torch.stack(
        [
            F.normalize(_features(model, data, c // 5, icarl.memory.entries[icarl.memory.labels == c, 1].tolist()).mean(0), dim=0)
            for c in range(10)
        ]
    )
    torch.testing.assert_close(icarl.means, means, rtol=1e-5, atol=1e-6)
    batch = data.tasks[1].test.__getitems__(list(range(60)))
    with torch.no_grad():
        phi = F.normalize(model.features(batch["input"]), dim=1)
        nearest = ((phi.unsqueeze(1) - means.unsqueeze(0)) ** 2).sum(-1).argmin(1)
        head = model(batch["input"]).argmax(1)
    assert not torch.equal(nearest, head)  # the head and the nearest mean disagree somewhere
    model.eval()
    counts = model.evaluation_counts(batch)
    assert counts["correct"].item() == (nearest == batch["target"]).sum().item()
    icarl.on_task_start(model, data.tasks[1])  # while a task trains, the head scores validation
    assert model.evaluation_counts(batch)["correct"].item() == (head == batch["target"]).sum().item()
