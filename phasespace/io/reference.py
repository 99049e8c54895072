"""Reference checkpoints in: the paper's released PyTorch state_dicts, converted to ``.npz``
(the repository's ``data/reference/``, :func:`find_reference_dir`), loaded into the engine's
parameter layout."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.defaults import ACTIVATIONS
from phasespace.io import store
from phasespace.models.linearformer import LinearformerArch
from phasespace.models.mlp import MLP_KINDS, MLPArch, MLPModel
from phasespace.models.transformer import TransformerArch
from phasespace.operations import ADDITION
from phasespace.tasks import operation_labels

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The folder holding the ``phasespace`` package: the repository in a checkout."""


def reference_dir_candidates() -> list[str]:
    """Where :func:`find_reference_dir` looks, in order: the repository's ``data/reference``
    (next to the package), then ``../shared/reference`` next to the repository and from the
    working directory."""
    found = [
        os.path.join(REPOSITORY, "data", "reference"),
        os.path.join(os.path.dirname(REPOSITORY), "shared", "reference"),
        os.path.abspath(os.path.join("..", "shared", "reference")),
    ]
    return list(dict.fromkeys(os.path.normpath(p) for p in found))


def find_reference_dir() -> str:
    """The folder of the released checkpoints (``<runid>.npz`` + ``<runid>.json``), the default of
    ``phasespace reference`` and ``phasespace analyze``.

    Raises:
        FileNotFoundError: if no candidate (:func:`reference_dir_candidates`) is a folder, naming
            them and the argument to pass instead.
    """
    candidates = reference_dir_candidates()
    for path in candidates:
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        "reference checkpoints not found in " + " or ".join(candidates) + " (they are not installed "
        "with the package: run from a checkout, or pass the folder, e.g. phasespace reference DIR)"
    )


class CheckpointError(ValueError):
    """A reference checkpoint whose keys or shapes do not match its configuration, or whose
    file cannot be read."""


def read_npz(path: str) -> dict[str, np.ndarray]:
    """:func:`phasespace.io.store.read_npz` of a checkpoint.

    Raises:
        FileNotFoundError: if ``path`` is missing.
        CheckpointError: naming the file if it is not a readable ``.npz`` (truncated, corrupt).
    """
    try:
        return store.read_npz(path, "checkpoint")
    except FileNotFoundError:
        raise
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def check_state_shapes(
    state: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    what: object,
    ignored: Collection[str] = (),
) -> None:
    """Every expected key present with its shape, and no other key (besides ``ignored``).

    Raises:
        CheckpointError: naming the key, the expected and the found shape (missing key or shape
            mismatch), or the unexpected keys and ``what`` they are not part of.
    """
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"missing key {key!r}: expected shape {shape}, found none")
        found = tuple(np.shape(state[key]))
        if found != shape:
            raise CheckpointError(f"key {key!r}: expected shape {shape}, found {found}")
    extra = sorted(set(state) - set(expected) - set(ignored))
    if extra:
        raise CheckpointError(f"unexpected keys {extra}: not part of {what}")


BLOCK_KEYS = {
    "attn.W_Q": "W_Q",
    "attn.W_K": "W_K",
    "attn.W_V": "W_V",
    "attn.W_O": "W_O",
    "mlp.W_in": "W_in",
    "mlp.b_in": "b_in",
    "mlp.W_out": "W_out",
    "mlp.b_out": "b_out",
}


def read_reference_config(path: str) -> dict[str, Any]:
    """The training config released with a checkpoint (``<runid>.json``) as a dict.

    Raises:
        CheckpointError: naming the file if it is not a JSON object.
    """
    try:
        return store.read_json_object(path)
    except ValueError as e:
        raise CheckpointError(f"reference config: {e}") from None


def reference_labels(cfg: Mapping[str, Any], p: int, n: int = 1) -> np.ndarray:
    """The labels a reference checkpoint was trained on: int32 (n, p²), addition (a + b) mod p
    (the reference code's ``funcs``; every released checkpoint is ``lambda x: (x[0]+x[1])%p``).

    Raises:
        ValueError: if the config's ``funcs`` is another function (the engine does not evaluate
            the reference's lambdas; only addition checkpoints are read).
    """
    funcs = cfg.get("funcs")
    if funcs is not None and "".join(str(funcs).split()) != f"lambdax:(x[0]+x[1])%{p}":
        raise ValueError(
            f"reference checkpoint config funcs={funcs!r}: only addition, "
            f"'lambda x: (x[0]+x[1])%{p}', is supported"
        )
    return np.tile(operation_labels(ADDITION, p), (n, 1))


def arch_from_reference_config(cfg: dict[str, Any]) -> TransformerArch | LinearformerArch:
    """:class:`TransformerArch` of a reference transformer config (``C``, ``d_model``,
    ``n_layers``, ``n_heads``, ``act_fn``, ``diff_vocab``, ``eqn_sign``), or
    :class:`~phasespace.models.linearformer.LinearformerArch` when it sets ``use_linear`` (the
    reference's ``Linearformer``; ``n_heads`` and ``attn_coeff`` unused).

    Raises:
        CheckpointError: for an MLP-model config (``model_type`` set) or an unknown ``act_fn``.
    """
    if cfg.get("model_type"):
        raise CheckpointError(
            f"model_type={cfg['model_type']!r}: not a transformer checkpoint (MLP models are "
            "loaded by phasespace.models.mlp)"
        )
    p = int(cfg["C"])
    diff_vocab = bool(cfg.get("diff_vocab") or False)
    eqn_sign = bool(cfg.get("eqn_sign") or False)
    act = str(cfg.get("act_fn", "ReLU")).lower()
    if act not in ACTIVATIONS:
        raise CheckpointError(f"act_fn={cfg.get('act_fn')!r}: expected 'ReLU', 'GeLU' or 'Tanh'")
    if cfg.get("use_linear"):
        return LinearformerArch(
            p=p,
            d_model=int(cfg["d_model"]),
            n_layers=int(cfg.get("n_layers", 1)),
            act=act,
            diff_vocab=diff_vocab,
            eqn_sign=eqn_sign,
        )
    return TransformerArch(
        p=p,
        d_model=int(cfg["d_model"]),
        n_layers=int(cfg.get("n_layers", 1)),
        n_heads=int(cfg.get("n_heads", 4)),
        act=act,
        diff_vocab=diff_vocab,
        eqn_sign=eqn_sign,
    )


def transformer_params_from_state_dict(state: dict[str, np.ndarray], arch: TransformerArch) -> dict[str, Any]:
    """Map a reference transformer ``state_dict`` to the engine's Flax parameter tree.

    Keys ``embed.W_E``, ``pos_embed.W_pos``, ``unembed.W_U`` and ``blocks.N.{attn,mlp}.*`` keep
    their shapes (see :mod:`phasespace.models.transformer`); ``blocks.N.attn.mask`` is an unused
    buffer and is ignored.

    Returns:
        ``{"params": {...}}`` of float32 NumPy arrays, one network, no run axis.

    Raises:
        CheckpointError: naming the key, the expected and the found shape, for a missing key, an
            unexpected key or a shape mismatch.
    """
    d, h, dh, dm, v = arch.d_model, arch.n_heads, arch.d_head, arch.d_mlp, arch.vocab
    expected: dict[str, tuple[int, ...]] = {
        "embed.W_E": (d, v),
        "pos_embed.W_pos": (arch.n_ctx, d),
        "unembed.W_U": (d, v),
    }
    block_shapes = {
        "attn.W_Q": (h, dh, d),
        "attn.W_K": (h, dh, d),
        "attn.W_V": (h, dh, d),
        "attn.W_O": (d, h * dh),
        "mlp.W_in": (dm, d),
        "mlp.b_in": (dm,),
        "mlp.W_out": (d, dm),
        "mlp.b_out": (d,),
    }
    for i in range(arch.n_layers):
        for k, s in block_shapes.items():
            expected[f"blocks.{i}.{k}"] = s
    ignored = {f"blocks.{i}.attn.mask" for i in range(arch.n_layers)}
    check_state_shapes(state, expected, arch, ignored)

    def f32(key: str) -> np.ndarray:
        return np.asarray(state[key], dtype=np.float32)

    params: dict[str, Any] = {
        "W_E": f32("embed.W_E"),
        "W_pos": f32("pos_embed.W_pos"),
        "W_U": f32("unembed.W_U"),
    }
    for i in range(arch.n_layers):
        params[f"blocks_{i}"] = {ours: f32(f"blocks.{i}.{ref}") for ref, ours in BLOCK_KEYS.items()}
    return {"params": params}


def linearformer_params_from_state_dict(
    state: dict[str, np.ndarray], arch: LinearformerArch
) -> dict[str, Any]:
    """Map a reference ``Linearformer`` ``state_dict`` (``embed.W_E`` (e, V), ``unembed.W_U``
    (d, V), ``blocks.N.W_in`` (d, d), ``blocks.N.b_in`` (d,)) to the engine's Flax tree (same
    shapes, :mod:`phasespace.models.linearformer`).

    Returns:
        ``{"params": {...}}`` of float32 NumPy arrays, one network, no run axis.

    Raises:
        CheckpointError: naming the key, the expected and the found shape, for a missing key, an
            unexpected key or a shape mismatch.
    """
    d, v = arch.d_model, arch.vocab
    expected: dict[str, tuple[int, ...]] = {"embed.W_E": (arch.d_embed, v), "unembed.W_U": (d, v)}
    for i in range(arch.n_layers):
        expected[f"blocks.{i}.W_in"] = (d, d)
        expected[f"blocks.{i}.b_in"] = (d,)
    check_state_shapes(state, expected, arch)

    def f32(key: str) -> np.ndarray:
        return np.asarray(state[key], dtype=np.float32)

    params: dict[str, Any] = {"W_E": f32("embed.W_E"), "W_U": f32("unembed.W_U")}
    for i in range(arch.n_layers):
        params[f"blocks_{i}"] = {"W_in": f32(f"blocks.{i}.W_in"), "b_in": f32(f"blocks.{i}.b_in")}
    return {"params": params}


def load_reference_transformer(
    npz_path: str, config_path: str | None = None
) -> tuple[TransformerArch | LinearformerArch, dict[str, Any], dict[str, Any]]:
    """Load a released reference transformer checkpoint (or a ``Linearformer`` one, config
    ``use_linear``).

    Args:
        npz_path: ``<runid>.npz``.
        config_path: its ``<runid>.json``; defaults to the same stem.

    Returns:
        ``(arch, params, config)``: the static architecture, the Flax parameter tree (one network)
        and the released training config (``attn_coeff`` is the attention rate α).

    Raises:
        CheckpointError: on keys or shapes that do not match the config.
        FileNotFoundError: if either file is missing.
    """
    if config_path is None:
        config_path = os.path.splitext(npz_path)[0] + ".json"
    cfg = read_reference_config(config_path)
    arch = arch_from_reference_config(cfg)
    state = read_npz(npz_path)
    if isinstance(arch, LinearformerArch):
        return arch, linearformer_params_from_state_dict(state, arch), cfg
    return arch, transformer_params_from_state_dict(state, arch), cfg


def arch_from_reference_mlp_config(cfg: dict[str, Any]) -> MLPArch:
    """:class:`~phasespace.models.mlp.MLPArch` of a reference MLP-model config (``model_type``
    A/X/B/C/D, ``C`` = p, ``d_hidden``).

    Raises:
        CheckpointError: for an unknown ``model_type``.
    """
    kind = cfg.get("model_type")
    if kind not in MLP_KINDS:
        raise CheckpointError(f"model_type={kind!r}: expected one of {sorted(MLP_KINDS)}")
    return MLPArch(p=int(cfg["C"]), d_model=int(cfg.get("d_hidden", cfg.get("d_model", 256))), kind=kind)


def load_reference_checkpoint(
    npz_path: str, config_path: str | None = None
) -> tuple[TransformerArch | MLPArch | LinearformerArch, dict[str, Any], dict[str, Any]]:
    """Load any released reference checkpoint: a transformer or an appendix MLP model (config
    with ``model_type``, keys ``embed.weight`` (p, e), ``unembed.weight`` (p, d_hidden),
    ``l1.*``, ``l2.*``; SPEC §3).

    Returns:
        ``(arch, params, config)`` as :func:`load_reference_transformer`.

    Raises:
        CheckpointError: on keys or shapes that do not match the config (naming the key, the
            expected and the found shape).
        FileNotFoundError: if either file is missing.
    """
    if config_path is None:
        config_path = os.path.splitext(npz_path)[0] + ".json"
    cfg = read_reference_config(config_path)
    if not cfg.get("model_type"):
        return load_reference_transformer(npz_path, config_path)
    arch = arch_from_reference_mlp_config(cfg)
    state = read_npz(npz_path)
    try:
        params = mlp_params_from_state_dict(state, arch)
    except ValueError as e:
        raise CheckpointError(f"{npz_path}: {e}") from e
    return arch, params, cfg


def mlp_params_from_state_dict(state: dict[str, np.ndarray], arch: MLPArch) -> dict[str, Any]:
    """Map a reference MLP-model ``state_dict`` (``embed.weight``, ``unembed.weight``,
    ``l1.weight``, ``l1.bias``, ``l2.*``; ``embed1``/``embed2`` for α′) to the Flax tree.

    Returns:
        ``{"params": {...}}`` of float32 NumPy arrays, one network.

    Raises:
        CheckpointError: naming the key, expected and found shape, for a
            missing, unexpected or mis-shaped key.
    """
    shapes = jax.eval_shape(lambda k: MLPModel(arch).init(k, jnp.zeros((1, 2), jnp.int32)), jax.random.key(0))
    expected = {
        ".".join(str(getattr(k, "key", k)) for k in path[1:]): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }
    check_state_shapes(state, expected, arch)
    params: dict[str, Any] = {}
    for key in expected:
        layer, leaf = key.split(".")
        params.setdefault(layer, {})[leaf] = np.asarray(state[key], dtype=np.float32)
    return {"params": params}
