"""Whether a request's plan can run on this node: checks shared by the data and control planes."""

from __future__ import annotations

import itertools

from adaptive.protocol.messages import PlanMessage

__all__ = ["check_plan", "check_route"]


def check_route(model: str, devices: tuple[str, ...], splits: tuple[int, ...], my_model: str, num_blocks: int,
                known: set[str], online: set[str] | None = None) -> tuple[str, bool]:
    """Why a plan cannot run here, and whether that may pass (``("", False)`` if it can run).

    Wrong model, a split out of range or not non-decreasing (permanent), work for a node never seen
    in the cluster (``known``) or for a node that is not online (``online``; default: every known
    node) — these two may pass, as peers announce themselves or the client re-plans. A plan may name
    an offline or unknown node that it gives no blocks to: that is how a dead node is planned around
    while the chain keeps its shape.
    """
    online = known if online is None else online
    if model != my_model:
        return f"plan is for model '{model}' but this node holds '{my_model}'", False
    for i, s in enumerate(splits):
        if not 0 <= s <= num_blocks:
            return f"split {i + 1} = {s} is out of range 0..{num_blocks}", False
    bounds = [0, *splits, num_blocks]
    if any(b < a for a, b in itertools.pairwise(bounds)):
        return f"splits {list(splits)} are not non-decreasing", False
    working = [n for i, n in enumerate(devices) if bounds[i + 1] > bounds[i] or i == 0]
    for node in working:
        if node not in known:
            return f"plan names unknown node '{node}'", True
    for node in working:
        if node not in online:
            return f"plan gives work to node '{node}', which is offline", True
    return "", False


def check_plan(plan: PlanMessage, model: str, num_blocks: int, known: set[str],
               online: set[str] | None = None) -> str:
    """Why a published plan cannot run here ("" if it can); see :func:`check_route`."""
    if plan.num_blocks and plan.num_blocks != num_blocks:
        return f"plan says the model has {plan.num_blocks} blocks but this node's has {num_blocks}"
    return check_route(plan.model, plan.devices, plan.splits, model, num_blocks, known, online)[0]
