"""A deliberately plain, loop-based reference of the latency model (docs/model.md).

Written independently of the vectorised :mod:`adaptive.model.latency` so that tests can compare the
two on random problems. Scalar conditions; returns (latency_ms, energy_j, feasible).
"""

from __future__ import annotations


def reference(model, devices, splits, codecs, *, bw, prop=0.0, load=0.0, clients=1,
              avail=None, return_result=True, idle_energy=False):
    L, D = model.num_blocks, len(devices)
    bw = [bw] * (D - 1) if isinstance(bw, (int, float)) else list(bw)
    prop = [prop] * (D - 1) if isinstance(prop, (int, float)) else list(prop)
    load = [load] * D if isinstance(load, (int, float)) else list(load)
    avail = [d.memory_mb for d in devices] if avail is None else list(avail)
    codec_objs = {c.name: c for c in model.codecs}
    bounds = [0, *splits, L]
    stages = [(bounds[d], bounds[d + 1]) for d in range(D)]
    act = [model.input_bytes] + [b.output_bytes for b in model.blocks]
    slow = [1.0 / (1.0 - dev.cpu_load_sensitivity * min(u, 0.95))
            for dev, u in zip(devices, load, strict=True)]
    share = [1] + [clients] * (D - 1)
    exec_ = [0.0] * D
    proc = [0.0] * D
    comm = [0.0] * D
    feasible = True
    for d, (a, b) in enumerate(stages):
        n = b - a
        if n == 0:
            continue
        corr = model.correction_for(devices[d].name)
        t = sum(model.latency_ms[devices[d].name][a:b]) - (corr.c0_ms * n + corr.c1_ms)
        batch = 1.0 if d == 0 else 1.0 + devices[d].batch_per_extra_item * (clients - 1)
        exec_[d] = max(t, 0.0) * slow[d] * batch
        params = sum(bl.param_bytes for bl in model.blocks[a:b])
        need = (params + 2 * share[d] * max(act[a:b + 1])) / 1e6
        feasible = feasible and need <= avail[d]

    def hop_terms(recv, link, nbytes):
        dev = devices[recv]
        # 1 KB takes 8/B ms on the wire at B Mbit/s; Q0 holds it at the reference rate
        q0 = max(dev.link.per_kb_ms + 8.0 / bw[link] - 8.0 / dev.link.ref_bandwidth_mbps, 0.0)
        packet = min(dev.link.mtu_bytes, nbytes)  # a message under one MTU is its only packet
        frag = q0 * packet / 1e3
        first = dev.link.first_packet_ms
        return q0 * nbytes / 1e3 + dev.link.offset_ms - frag, frag + first + prop[link]

    def path(src, dst, nbytes):
        hops = []
        if dst > src:
            for h in range(src + 1, dst + 1):
                hops.append(hop_terms(h, h - 1, nbytes))
        else:
            for h in range(src - 1, dst - 1, -1):
                hops.append(hop_terms(h, h, nbytes))
        pipelined = max(x[0] for x in hops) + sum(x[1] for x in hops)
        store_and_forward = sum(x[0] + x[1] for x in hops)
        return max(0.0, min(pipelined, store_and_forward))

    active = [d for d in range(D) if stages[d][1] > stages[d][0]]
    for j in range(1, D):
        if j not in active:
            continue
        i = max([x for x in active if x < j], default=0)
        raw = act[stages[j][0]]
        name = codecs[j - 1] if codecs else "none"
        c = codec_objs.get(name)
        ratio = c.bytes_ratio if c else 1.0
        nbytes = raw * ratio
        comm[j] += path(i, j, nbytes)
        proc[i] += devices[i].outbound.ms(nbytes)
        proc[j] += devices[j].inbound.ms(nbytes)
        if c:
            enc = c.encode_cost(devices[i].name).ms(raw)
            dec = c.decode_cost(devices[j].name).ms(raw)
            if i > 0:
                enc -= model.correction_for(devices[i].name).c0_ms * c.layers
            dec -= model.correction_for(devices[j].name).c0_ms * c.layers
            exec_[i] += enc * slow[i]
            exec_[j] += dec * slow[j]
    last = max(active, default=0)
    if last > 0:
        proc[last] += devices[last].outbound.ms(model.result_bytes)
        if return_result:
            comm[0] += path(last, 0, model.result_bytes)
            proc[0] += devices[0].inbound.ms(model.result_bytes)
    latency = sum(exec_) + sum(proc) + sum(comm)
    energy_mj = 0.0
    for d, dev in enumerate(devices):
        energy_mj += dev.power_active_w * (exec_[d] / share[d] + proc[d] + comm[d])
        if idle_energy:
            energy_mj += dev.power_idle_w * (latency - exec_[d] - proc[d] - comm[d])
    return latency, energy_mj / 1e3, feasible
