"""Subprocess worker for tests/e2e/test_parallel.py: train and analyse a tiny population on N CPU
devices and save the results (run as ``python parallel_worker.py N OUT.npz [GROUP_SIZE]``)."""

import sys

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))

import numpy as np  # noqa: E402

from phasespace.analysis.network import analyze_population  # noqa: E402
from phasespace.models.transformer import TransformerArch  # noqa: E402
from phasespace.population.stack import NetworkSpec, build_population  # noqa: E402
from phasespace.spec.networks import Recipe  # noqa: E402
from phasespace.training import placement  # noqa: E402
from phasespace.training.loop import train_population  # noqa: E402


def main() -> None:
    n_dev, out = int(sys.argv[1]), sys.argv[2]
    group = int(sys.argv[3]) if len(sys.argv) > 3 else None
    assert len(jax.devices()) == n_dev, jax.devices()
    arch = TransformerArch(p=7, d_model=12)
    # 6 networks: not a multiple of 4 devices, so the run axis is padded with inert copies
    nets = [NetworkSpec(seed=i, attention_rate=i / 5, d_model=(8, 12)[i % 2], lr=3e-3) for i in range(6)]
    pop = build_population(arch, nets)
    layout = placement.simple_layout(pop.size, group_size=group)
    state, hist = train_population(pop, Recipe(steps=12), chunk_steps=6, layout=layout)
    hp = pop.hparams
    params = placement.tree_to_host(state.params)  # analysed on one device (as the sweep does)
    m = analyze_population(
        arch, params, hp["attention_rate"], hp["attn_scale"], hp["train_mask"], n_triples=10
    )
    leaves = {f"param_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
    np.savez(
        out,
        devices=layout.n_devices,
        **leaves,
        **{f"h_{k}": v for k, v in hist.items()},
        **{f"m_{k}": v for k, v in m.items()},
    )


if __name__ == "__main__":
    main()
