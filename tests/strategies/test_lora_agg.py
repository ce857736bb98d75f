"""LoRA aggregation modes on tiny tensors, through the strategy's own messages: ffa is exact and
never moves A, fedex's effective weights are the exact mean, flex is the (truncated) SVD of the
mean update, and the aggregation error says which modes are exact."""

from __future__ import annotations

import pytest
import torch

from fl.config import Config, parse_ranks
from fl.strategies import ClientUpdate, LoraAggregator, build_strategy
from fl.strategies.base import ClientContext, TrainResult
from fl.strategies.lora_agg import RankMask, factor, factored_error, lora_modules, products, relative_error

A, B, HEAD = "m.lora_A.weight", "m.lora_B.weight", "head.weight"
SCALE = 2.0
D_IN, D_OUT, R = 5, 4, 3


def clients(seed: int = 0) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """Three clients' trained states (A, B, head) with different example counts."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (2, 5, 9):
        out.append(
            (
                n,
                {
                    A: torch.randn(R, D_IN, generator=g),
                    B: torch.randn(D_OUT, R, generator=g),
                    HEAD: torch.randn(2, 2, generator=g),
                },
            )
        )
    return out


def aggregate(mode: str, glob: dict, sent: list, frozen: dict | None = None, base: dict | None = None, ranks=None):
    """One round through the strategy: template, client messages, sums, the server step.
    Returns (the LoRA part, the next global state, the aggregation error)."""
    cfg = Config(
        num_clients=len(sent),
        lora_aggregation=mode,
        lora_r=R,
        lora_alpha=SCALE * R,
        **({"lora_ranks": ",".join(map(str, ranks))} if ranks else {}),
    )
    s = build_strategy(cfg)
    lora = s.part(LoraAggregator)
    lora.modules, lora.scale = lora_modules({A, B}), SCALE
    lora.frozen = frozen or {}
    lora.base = dict(base or {})
    plan = s.plan_round(1)
    template = s.upload_template(glob, plan)
    sums, each = template.zeros(), {}
    for c, (n, end) in enumerate(sent):
        start = s.client_start(c, glob)
        delta = {k: end[k] - start[k] for k in glob}
        ctx = ClientContext(c, plan, start, 0, 1, 1, torch.device("cpu"))
        parts = s.client_finish(ctx, end, TrainResult(n, 0.0, n, 1, 1.0, 1.0), model=None)
        each[c] = s.client_message(template, ClientUpdate(c, n, delta, loss_sum=0.0, seen=n, parts=parts), plan)
        sums.add_(each[c])
    # fedit / ffa measure the error from every client's own update (the strategy gathers them)
    new, record = s.server_step(glob, sums, each if s.gathers else None, plan, load=lambda state: None)
    return lora, new, record["aggregation_error"]


def mean_products(sent: list, frozen: dict | None = None) -> torch.Tensor:
    total = sum(n for n, _ in sent)
    return sum(n * products({**(frozen or {}), **st}, lora_modules({A, B}), SCALE)["m"] for n, st in sent) / total


def test_fedit_leaves_an_error_when_clients_differ():
    sent = clients()
    glob = {k: torch.zeros_like(v) for k, v in sent[0][1].items()}
    s, new, err = aggregate("fedit", glob, sent)
    total = sum(n for n, _ in sent)
    for k in (A, B, HEAD):  # the plain example-weighted mean of each tensor
        torch.testing.assert_close(new[k], sum(n * st[k] for n, st in sent) / total)
    assert err > 0.1
    # the error from the gathered factors is the dense formula, with M = mean(s B_i A_i) formed explicitly
    dense = relative_error({"m": mean_products(sent)}, products(new, lora_modules({A, B}), SCALE))
    assert err == pytest.approx(dense, rel=1e-5)


def test_the_factored_error_equals_the_dense_one_without_forming_products():
    g = torch.Generator().manual_seed(3)
    modules = lora_modules({A, B})
    sent = [
        (float(n), {A: torch.randn(R, D_IN, generator=g), B: torch.randn(D_OUT, R, generator=g)}) for n in (1, 4, 7)
    ]
    total = sum(n for n, _ in sent)
    mean = {"m": sum(n * products(st, modules, SCALE)["m"] for n, st in sent) / total}
    for got in (sent[0][1], {A: torch.randn(R, D_IN, generator=g), B: torch.zeros(D_OUT, R)}):
        want = relative_error(mean, products(got, modules, SCALE))
        assert factored_error(sent, got, modules) == pytest.approx(want, rel=1e-6)
    # the exact mean of rank-1 clients sharing A is found exactly (the FFA case): zero, not rounding noise
    a = torch.randn(R, D_IN, generator=g)
    same_a = [(n, {A: a, B: st[B]}) for n, st in sent]
    mean_b = {A: a, B: sum(n * st[B] for n, st in same_a) / total}
    assert factored_error(same_a, mean_b, modules) < 1e-6


def test_ffa_never_moves_a_and_is_exact():
    sent = clients()
    shared_a = sent[0][1][A].clone()
    trained = [(n, {B: st[B], HEAD: st[HEAD]}) for n, st in sent]  # A is frozen: it does not travel
    glob = {B: torch.zeros(D_OUT, R), HEAD: torch.zeros(2, 2)}
    s, new, err = aggregate("ffa", glob, trained, frozen={A: shared_a})
    assert A not in new and torch.equal(s.frozen[A], shared_a)
    exact = mean_products(trained, {A: shared_a})
    torch.testing.assert_close(SCALE * new[B] @ shared_a, exact, atol=1e-5, rtol=0)
    assert err < 1e-6


def test_fedex_effective_weights_are_the_exact_mean():
    sent = clients()
    glob = {k: torch.zeros_like(v) for k, v in sent[0][1].items()}
    w0 = torch.randn(D_OUT, D_IN, generator=torch.Generator().manual_seed(7))
    s, new, err = aggregate("fedex", glob, sent, base={"m": w0})
    total = sum(n for n, _ in sent)
    clients_effective = sum(n * (w0 + SCALE * st[B] @ st[A]) for n, st in sent) / total
    global_effective = s.base["m"] + SCALE * new[B] @ new[A]
    torch.testing.assert_close(global_effective, clients_effective, atol=1e-5, rtol=0)
    assert err < 1e-6
    # the folded residual is what fedit leaves out
    fedit = SCALE * new[B] @ new[A]
    assert float((s.base["m"] - w0 - (clients_effective - w0 - fedit)).abs().max()) < 1e-5


def test_flex_full_rank_is_exact_and_lower_ranks_are_truncated_svds():
    sent = clients()
    glob = {k: torch.zeros_like(v) for k, v in sent[0][1].items()}
    # clients that share one A: the mean update s * mean(B_i) @ A has rank <= R, so rank R is exact
    shared = [(n, {**st, A: sent[0][1][A]}) for n, st in sent]
    s, new, err = aggregate("flex", glob, shared, ranks=[3, 3, 3])
    torch.testing.assert_close(SCALE * new[B] @ new[A], mean_products(shared), atol=1e-5, rtol=0)
    assert err < 1e-5
    s, new, err = aggregate("flex", glob, sent, ranks=[3, 2, 1])
    m = mean_products(sent)
    u, sv, vh = torch.linalg.svd(m.double())
    for r in (1, 2, 3):  # each client's start: the first r components = the rank-r truncated SVD
        start = s.client_start([3, 2, 1].index(r), new)
        best = (u[:, :r] * sv[:r]) @ vh[:r]
        torch.testing.assert_close((SCALE * start[B] @ start[A]).double(), best, atol=1e-5, rtol=0)
    assert err == pytest.approx(float(sv[R:].pow(2).sum().sqrt() / sv.pow(2).sum().sqrt()), rel=1e-4)


def test_flex_masks_keep_lower_ranks_fixed():
    s = build_strategy(Config(num_clients=2, lora_aggregation="flex", lora_r=R, lora_ranks="3,1"))
    s.part(LoraAggregator).modules = lora_modules({A, B})
    glob = {A: torch.ones(R, D_IN), B: torch.ones(D_OUT, R), HEAD: torch.ones(2, 2)}
    plan = s.plan_round(1)
    (term,) = s.client_terms(ClientContext(1, plan, s.client_start(1, glob), 0, 1, 1, torch.device("cpu")))
    assert isinstance(term, RankMask)
    assert term.mask[A][:1].eq(1).all() and term.mask[A][1:].eq(0).all() and term.mask[B][:, 1:].eq(0).all()
    assert s.client_terms(ClientContext(0, plan, glob, 0, 1, 1, torch.device("cpu"))) == []  # full rank: no mask


def test_factor_and_error_helpers():
    m = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    b, a = factor(m, 4, 0.5)
    torch.testing.assert_close(0.5 * b @ a, m, atol=1e-5, rtol=0)
    b, a = factor(m, 6, 0.5)  # more rank than the matrix has: zero columns
    assert b.shape == (6, 6) and b[:, 4:].abs().max() == 0
    modules = {"x": ("x.a", "x.b")}
    assert relative_error({"x": m}, products({"x.a": a, "x.b": b}, modules, 0.5)) < 1e-6
    assert parse_ranks("8,4", 5, 8) == [8, 4, 8, 4, 8]
    with pytest.raises(ValueError, match="each rank must be in"):
        parse_ranks("16", 2, 8)


@pytest.mark.slow
def test_the_7b_hub_recipes_upload_at_most_two_adapters_per_client_rank():
    """The aggregation error no longer sends d_out x d_in products: what a client rank sends per round
    (the code's own count, on the meta device) is at most two adapters (+ the per-client scalars)."""
    from bench.lora_scale import RECIPES, measure

    for recipe in RECIPES:
        r = measure(recipe)
        assert r["adapter_bytes"] < r["mean"] <= r["max"] <= 2 * r["adapter_bytes"] + 4 * 64, r
        assert r["before_mean"] > 30 * r["adapter_bytes"]  # what the products cost
