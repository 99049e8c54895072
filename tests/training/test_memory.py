"""Memory planning: populations split into groups and host chunks that fit a device limit."""

import jax
import numpy as np
import pytest

from phasespace.models.transformer import TransformerArch
from phasespace.population.stack import NetworkSpec, build_population
from phasespace.spec.networks import Recipe
from phasespace.spec.parse import parse_bytes
from phasespace.training import memory, placement
from phasespace.training.loop import train_population
from phasespace.training.program import compiled_sharded_chunk

ARCH = TransformerArch(p=7, d_model=16)
RECIPE = Recipe(steps=6)
R, K = 8, 3


def _need(group: int, chunk: int) -> int:
    layout = placement.Layout(placement.run_mesh(jax.devices()[:1]), R, group, chunk)
    return memory.compiled_bytes(compiled_sharded_chunk(ARCH, RECIPE, K, layout, chunk))


@pytest.fixture(scope="module")
def reference():
    pop = build_population(ARCH, [NetworkSpec(seed=i, attention_rate=i / 7, d_model=16) for i in range(R)])
    layout = placement.Layout(placement.run_mesh(jax.devices()[:1]), R, R, R)
    state, hist = train_population(pop, RECIPE, K, layout=layout)
    return pop, jax.tree_util.tree_map(np.asarray, state.params), hist


def test_memory_analysis_grows_with_the_networks_held():
    assert 0 < _need(1, 1) < _need(1, R) and _need(1, 1) < _need(R, R)


@pytest.mark.parametrize("fraction", [0.75, 0.0])
def test_plan_fits_a_small_limit_and_trains_the_same(reference, fraction):
    """With a limit between one network's program and the whole population's, the plan lowers the
    group size and/or trains the bucket in host chunks; the results do not change."""
    pop, params_ref, hist_ref = reference
    one, full = _need(1, 1), _need(R, R)
    limit = int(one * 1.2 + (full - one) * fraction)
    assert limit < full
    dev = jax.devices()[:1]
    plan = memory.plan_training(ARCH, RECIPE, R, K, devices=dev, memory_limit=limit, group_size=R)
    assert plan.bytes_needed <= limit and plan.limit == limit
    assert (plan.layout.group_size, plan.layout.host_chunk) != (R, R)
    state, hist = train_population(pop, RECIPE, K, layout=plan.layout)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hist["train_loss"], hist_ref["train_loss"], rtol=1e-5)


def test_one_network_that_does_not_fit_is_a_clear_error():
    limit = _need(1, 1) - 1
    msg = r"one network per device needs .* MiB .* memory limit"
    with pytest.raises(memory.DeviceMemoryError, match=msg):
        memory.plan_training(ARCH, RECIPE, R, K, devices=jax.devices()[:1], memory_limit=limit)


def test_environment_limit_and_byte_sizes(monkeypatch):
    assert parse_bytes("auto") is None and parse_bytes(None) is None
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(4096) == 4096
    for bad in ("lots", "-1GB", 0, True, "3 parsecs"):
        with pytest.raises(ValueError, match="memory_limit"):
            parse_bytes(bad)
    monkeypatch.setenv(memory.ENV_MEMORY_LIMIT, "3MiB")
    assert memory.device_memory_limit(jax.devices()[0]) == 3 * 2**20
    assert memory.device_memory_limit(jax.devices()[0], override=123) == 123
    monkeypatch.delenv(memory.ENV_MEMORY_LIMIT)
    assert memory.device_memory_limit(jax.devices()[0]) > 2**20  # available RAM
