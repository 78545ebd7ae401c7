"""Non-finite steps: a diverging run stops loudly and keeps its last good
checkpoint; ``on_nonfinite='skip'`` leaves such steps' state unchanged."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lapjax.train import checkpoint, load_state, train_and_evaluate, train_step
from tests.train import test_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _strict(text):
  """JSON lines parsed strictly: a bare NaN / Infinity raises."""
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return [json.loads(ln, parse_constant=refuse) for ln in text.splitlines()]


def test_diverging_run_stops_naming_the_step_and_last_good_checkpoint(
    tmp_path):
  """The issue's reproduction: learning rate 1e9 on the tiny config."""
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "train.py"),
       f"--config={os.path.join(ROOT, 'configs', 'default.py')}:tiny",
       "--config.optimizer.learning_rate=1e9", f"--workdir={workdir}",
       "--noprogress"],
      capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode != 0
  found = re.search(r"NonFiniteError: training diverged: step (\d+) has a "
                    r"non-finite loss, gradient or state .*the last good "
                    r"checkpoint is step (\d+) in (\S+) \(kept", out.stderr)
  assert found, out.stderr[-3000:]
  bad, good = int(found[1]), int(found[2])
  assert good < bad
  assert found[3] == str(workdir / "checkpoints")
  # Only finite states were saved; the newest is the one named.
  assert checkpoint.latest_step(str(workdir)) == good
  config = default.get_config("tiny")
  _, state, _ = load_state(config, str(workdir))
  assert int(state.step) == good
  assert checkpoint.all_finite((state.params, state.batch_stats,
                                state.opt_state))
  # metrics.jsonl stays strict JSON (null where the mean is not finite).
  _strict((workdir / "metrics.jsonl").read_text())


def _setup():
  config, source, model, tx, state = test_train_step._setup()
  return model, tx, state, test_train_step._batch(source, config, 0)


def test_skip_keeps_the_state_of_a_nonfinite_step():
  model, tx, state, batch = _setup()
  poisoned = dict(batch, image=batch["image"].copy())
  poisoned["image"][3, 5, 5, 0] = np.nan

  def step(s, b, mode):
    return jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx,
                                           on_nonfinite=mode))(s, b)

  skipped, m = step(state, poisoned, "skip")
  assert float(m["nonfinite"]) == 1.0
  assert float(m["loss"]) == 0.0            # zeroed: only the flag counts
  assert int(skipped.step) == 1             # the next step reads batch 1
  for a, b in zip(jax.tree.leaves((state.params, state.batch_stats,
                                   state.opt_state)),
                  jax.tree.leaves((skipped.params, skipped.batch_stats,
                                   skipped.opt_state))):
    np.testing.assert_array_equal(a, b)
  # 'stop' applies the step (the loop stops on the flag): NaN parameters.
  applied, m = step(state, poisoned, "stop")
  assert float(m["nonfinite"]) == 1.0
  assert not checkpoint.all_finite(applied.params)
  # A finite step is the same in both modes, and flagged 0.
  a, ma = step(state, batch, "skip")
  b, mb = step(state, batch, "stop")
  assert float(ma["nonfinite"]) == float(mb["nonfinite"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, a, b)
  np.testing.assert_allclose(
      ma["grad_norm"],
      np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(
          jax.grad(lambda p: _loss(model, state, batch, p))(state.params)))),
      rtol=1e-5)
  with pytest.raises(ValueError, match="on_nonfinite must be one of"):
    train_step(state, batch, model=model, tx=tx, on_nonfinite="ignore")


def _loss(model, state, batch, params):
  logits, _ = model.apply({"params": params,
                           "batch_stats": state.batch_stats}, batch["image"],
                          train=True, mutable=["batch_stats"],
                          rngs={"dropout": state.step_key()})
  labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
  return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))


def test_skip_mode_finishes_and_counts_the_skipped_steps(tmp_path):
  config = default.get_config("tiny")
  config.optimizer.learning_rate = 1e9
  config.on_nonfinite = "skip"
  state = train_and_evaluate(config, str(tmp_path), progress=False)
  assert int(state.step) == config.num_steps
  assert checkpoint.all_finite((state.params, state.batch_stats,
                                state.opt_state))
  records = [r for r in _strict((tmp_path / "metrics.jsonl").read_text())
             if "loss" in r]
  skipped = sum(r["nonfinite_steps"] for r in records)
  assert 0 < skipped <= config.num_steps


def test_evaluation_refuses_a_nonfinite_checkpoint(tmp_path):
  """Runs saved before the guard may hold NaN weights: refused by name."""
  config = default.get_config("tiny")
  config.num_steps = 1
  state = train_and_evaluate(config, str(tmp_path), progress=False)
  poisoned = state.replace(params=jax.tree.map(
      lambda x: jnp.full_like(x, jnp.nan), state.params), step=state.step + 1)
  manager = checkpoint.checkpoint_manager(str(tmp_path), save_every=1)
  checkpoint.save(manager, poisoned, force=True)
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(ValueError, match="step 2 .* non-finite parameters"):
    load_state(config, str(tmp_path))
