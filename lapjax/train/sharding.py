"""Data parallelism with ``jax.sharding``: one mesh, batches split on 'data'.

Parameters and optimiser state are replicated; each batch is split along its
first axis over every device of the mesh. Under ``jit`` the batch mean (and
BatchNorm's batch statistics) are global, so a sharded step computes the same
numbers as a single-device step up to float reduction order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  # Auto axes: XLA propagates the batch sharding; nothing leaks into the
  # types of arrays that later leave the training loop.
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(tree, mesh: Mesh):
  """``tree``'s arrays replicated on every device of ``mesh``.

  With several processes each process passes the same values (e.g. the
  same checkpoint) and places its own copies; ``jax.device_put`` of an
  array that lives on one process's device would need a cross-host
  transfer, which the CPU backend does not have.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])
  return jax.tree.map(put, tree)


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, *,
                     name: str = "batch_size") -> None:
  """Raises ValueError unless the global batch splits evenly over devices."""
  n = mesh.size
  if batch_size % n:
    raise ValueError(
        f"{name}={batch_size} is not divisible by the {n} devices of the "
        f"mesh; use a multiple of {n} (e.g. {n * max(1, batch_size // n)})")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh
                ) -> dict[str, jax.Array]:
  """Places this process's part of a global batch on the mesh's devices."""
  sharding = data_sharded(mesh)
  out = {}
  for k, v in batch.items():
    check_batch_size(len(v) * jax.process_count(), mesh,
                     name=f"batch[{k!r}] size")
    out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
  return out
