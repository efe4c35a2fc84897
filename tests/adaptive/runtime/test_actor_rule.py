"""The ``policy`` decision rule: an actor network the source evaluates per request."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401
from adaptive.errors import AdaptiveError
from adaptive.model.decision import GRID_MBPS, actor_rule, grid_choices
from adaptive.model.latency import ConditionBatch
from adaptive.model.mlp import MlpPolicyNet
from adaptive.protocol.messages import SchemaError
from adaptive.protocol.rules import RuleMessage, RulePlan
from adaptive.runtime.source import ActorRunner

DEVICES = ("pi", "jetson", "jetson2")


def random_net(sizes, seed=0):
    rng = np.random.default_rng(seed)
    pairs = itertools.pairwise(sizes)
    return MlpPolicyNet([(rng.normal(0, 1, (o, i)), rng.normal(0, 0.1, o)) for i, o in pairs], step_s=0.25)


@pytest.fixture(scope="module")
def setting():
    env = gym.make("adaptive/SplitInference-v0").unwrapped
    spec, model, cands = env.obs_spec, env.model, env.candidates
    P = spec.num_plans
    mem = np.array([d.memory_mb for d in model.devices])
    cond = ConditionBatch(np.array([[10.0, 1000.0]]), np.zeros((1, 2)), np.array([[0.1, 0.3, 0.2]]),
                          np.array([2.0]), (mem * 0.6)[None])
    allowed = np.ones(P, bool)
    allowed[3] = False  # say a dead node
    pred, ok = grid_choices(model, cands, cond, allowed)
    latency = np.where(pred.feasible, pred.latency_ms, np.inf)

    def exact(bw_mbps, history=None):
        """The observation the env's mapping gives at this uplink (current plan 0, no dwell)."""
        c = cond._replace(bandwidth_mbps=np.array([[bw_mbps, 1000.0]]))
        p = model.evaluate(cands.plans, c)
        hist = np.array([[[h, 1000.0] for h in (history or [bw_mbps] * spec.history)]])
        static = spec.static_part(c.cpu_load, c.available_mb / mem, hist, c.clients, p.latency_ms, p.feasible)
        return spec.encode(static[0], 0, 0)

    net = random_net([spec.size, 16, P])
    template = exact(10.0)
    actor = actor_rule(latency, ok, spec, template, 0.25, net.to_json())
    rows = tuple(RulePlan(p.splits, p.codecs) for p in (cands.plan(a) for a in range(P)))
    rule = RuleMessage(5, "pi", "mobilenet_v2", DEVICES, model.num_blocks, 1.0, "ppo", (), rows, "policy",
                       actor)
    return dict(rule=rule, net=net, exact=exact, ok=ok, spec=spec)


def test_policy_rule_round_trips_and_fits_a_message(setting):
    rule = setting["rule"]
    payload = rule.encode()
    assert len(payload) < 64 * 1024
    back = RuleMessage.decode(payload)
    assert back == rule
    from importlib import resources

    import jsonschema

    schema = json.loads(resources.files("adaptive.protocol").joinpath("schemas", "rule.v1.json").read_text())
    jsonschema.validate(json.loads(payload), schema)


def test_a_new_policy_rule_keeps_the_sources_plan_dwell_and_history(setting):
    from adaptive.runtime.source import SourceDecider
    from monitor.presence import Presence

    decider = SourceDecider("pi", Presence())
    first = ActorRunner(setting["rule"])
    decider.set_rule(setting["rule"], first)
    first.decide(10.0, 50.0, lambda n: True)
    first.decide(10.2, 2.0, lambda n: True)
    second = ActorRunner(setting["rule"])
    decider.set_rule(replace(setting["rule"], version=6), second)
    assert decider.runner is second and decider.rule.version == 6
    assert (second.current, second.switched_at) == (first.current, first.switched_at)
    assert list(second.history) == [(10.0, 50.0), (10.2, 2.0)]


def test_the_source_builds_the_envs_observation_and_acts_like_the_network(setting):
    rule, net, exact, spec = setting["rule"], setting["net"], setting["exact"], setting["spec"]
    runner = ActorRunner(RuleMessage.decode(rule.encode()))
    g = 40  # a grid point: predictions are exact there, up to the message's 0.01 ms rounding
    bw = float(GRID_MBPS[g])
    now = 100.0
    runner.switched_at = now
    obs, mask = runner.observation(now, bw)
    np.testing.assert_allclose(obs, exact(bw), atol=1e-4)
    np.testing.assert_array_equal(mask, setting["ok"][g])
    assert runner.decide(now, bw, lambda n: True) == net.act(exact(bw), setting["ok"][g])
    # between grid points the predicted latencies are interpolated (log-log): close to exact
    between = float(np.sqrt(GRID_MBPS[50] * GRID_MBPS[51]))
    fresh = ActorRunner(rule)
    fresh.switched_at = now
    obs, _ = fresh.observation(now, between)
    P = spec.num_plans
    pred_at = 2 * spec.num_devices + (spec.num_devices - 1) * spec.history + 1
    np.testing.assert_allclose(obs[pred_at : pred_at + P], exact(between)[pred_at : pred_at + P], atol=0.01)


def test_the_source_keeps_its_uplink_history_at_the_actors_step(setting):
    runner = ActorRunner(setting["rule"])
    for t, bw in [(0.0, 2.0), (0.3, 4.0), (0.55, 8.0), (0.7, 16.0)]:
        runner.observation(t, bw)
    obs, _ = runner.observation(0.8, 16.0)
    runner.switched_at = 0.8
    # steps at 0.05, 0.30, 0.55 and 0.80 s: the newest estimate at or before each
    want = setting["exact"](16.0, history=[2.0, 4.0, 8.0, 16.0])
    D, H = setting["spec"].num_devices, setting["spec"].history
    np.testing.assert_allclose(obs[2 * D : 2 * D + H], want[2 * D : 2 * D + H], atol=1e-6)


def test_a_dead_node_masks_the_plans_that_use_it(setting):
    runner = ActorRunner(setting["rule"])
    chosen = runner.decide(10.0, 50.0, lambda n: True)
    working = setting["rule"].plan(chosen).working_nodes()
    dead = next((n for n in working if n != "pi"), None)
    if dead is None:  # the actor picked device-only: offloading plans are the ones to kill
        dead = "jetson"
    again = runner.decide(10.1, 50.0, lambda n: n != dead)
    assert dead not in setting["rule"].plan(again).working_nodes()


def test_malformed_policy_rules_are_refused_with_the_field_named(setting):
    doc = json.loads(setting["rule"].encode())
    for path, value, field in [
        (("actor", "allowed"), ["2" * 7] * len(GRID_MBPS), "allowed"),
        (("actor", "template"), [0.0] * 3, "template"),
        (("actor", "predicted_ms"), [[-1.0] * 7] * len(GRID_MBPS), "predicted_ms"),
        (("actor", "step_s"), 0, "step_s"),
        (("edges_mbps",), [1.0], "edges_mbps"),
    ]:
        bad = json.loads(json.dumps(doc))
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(SchemaError, match=field):
            RuleMessage.decode(json.dumps(bad))
    # the network is checked where it is loaded: a shape that does not fit the observation
    wrong = random_net([setting["spec"].size + 1, 8, setting["spec"].num_plans])
    bad = json.loads(json.dumps(doc))
    bad["actor"]["network"] = wrong.to_json()
    with pytest.raises(AdaptiveError, match="inputs"):
        ActorRunner(RuleMessage.decode(json.dumps(bad)))
    bad["actor"]["network"]["layers"][0]["weight"] = "not base64!"
    with pytest.raises(AdaptiveError, match="base64"):
        ActorRunner(RuleMessage.decode(json.dumps(bad)))


def test_mlp_json_rejects_what_it_cannot_run():
    net = random_net([5, 4, 3])
    doc = net.to_json()
    assert MlpPolicyNet.from_json(doc).act(np.ones(5)) == net.act(np.ones(5))
    for mutate, match in [(lambda d: d.update(activation="relu"), "activation"),
                          (lambda d: d["layers"][0].update(shape=[4, 6]), "float32"),
                          (lambda d: d["layers"].clear(), "layers"),
                          (lambda d: d["layers"][1].update(shape=[3, 5]), "float32|inputs")]:
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        with pytest.raises(AdaptiveError, match=match):
            MlpPolicyNet.from_json(bad)
    nan = json.loads(json.dumps(doc))
    poisoned = MlpPolicyNet([(np.ones((4, 5)), np.full(4, np.nan))]).to_json()
    nan["layers"][0]["bias"] = poisoned["layers"][0]["bias"]
    with pytest.raises(AdaptiveError, match="finite"):
        MlpPolicyNet.from_json(nan)


def test_the_controller_publishes_the_actor_and_only_when_its_basis_moves():
    from importlib import resources
    from pathlib import Path

    from adaptive.control.controller import Controller, ControllerConfig
    from agents.wiring import build_policy
    from monitor.transport import BrokerAddress

    kinds = ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")
    chain = [{"node": n, "device": d} for n, d in zip(DEVICES, kinds, strict=True)]
    config = ControllerConfig.from_dict({"model_profile": "mobilenet_v2", "cluster": "c", "chain": chain})
    policy, cands, spec, name, on_model = build_policy("ppo", config)
    ctl = Controller(config, BrokerAddress("127.0.0.1", 1), policy, candidates=cands, obs_spec=spec,
                     policy_name=name, on_model=on_model)
    assert ctl.rule_kind == "policy"  # source_rule: auto, with a trained policy
    mem = np.array([d.memory_mb for d in ctl.devices])
    cond = ConditionBatch(np.array([[8.0, 1000.0]]), np.zeros((1, 2)), np.zeros((1, 3)), np.ones(1),
                          mem[None])
    obs = np.zeros(spec.size, np.float32)
    mask = np.ones(spec.num_plans, bool)
    rule = ctl.publish_actor_rule(100.0, obs, mask, cond)
    sent = RuleMessage.decode(ctl.channel.transport._buffer[-1].payload)
    assert sent == rule and sent.kind == "policy" and sent.actor.step_s == 0.25
    net = MlpPolicyNet.load(Path(str(resources.files("agents.trained").joinpath("ppo_default.mlp.json"))))
    assert MlpPolicyNet.from_json(sent.actor.network).act(np.ones(spec.size)) == net.act(np.ones(spec.size))
    ActorRunner(sent)  # the source can load it
    assert ctl.publish_actor_rule(101.0, obs + 0.01, mask, cond) is None  # within the slack: kept
    busier = obs.copy()
    busier[0] = 0.5  # the pi's CPU load
    assert ctl.publish_actor_rule(102.0, busier, mask, cond) is not None
    dead = mask.copy()
    dead[1:] = False  # only device-only left
    again = ctl.publish_actor_rule(103.0, busier, dead, cond)
    assert again is not None and set(again.actor.allowed) == {"1" + "0" * (spec.num_plans - 1)}
