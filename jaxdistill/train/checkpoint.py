"""Checkpoints of the trainable state with orbax-checkpoint (design §5, jax-ecosystem §3).

One `CheckpointManager` per run directory; each step holds two items: `state` (the whole
`TrainState`: generator, critic, EMA, both optimizer states, step, RNG key) and `config` (the
resolved run configuration as JSON). The frozen teacher is never written. Saves are
asynchronous; orbax writes each step into a temporary folder and renames it when complete, so
a save killed half-way is never listed and resume takes the latest complete step. Restore goes
through an abstract target carrying the *new* run's shardings, so a checkpoint written on one
mesh restores onto any other mesh or device count.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` placed on `shardings`: the restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class Checkpointer:
    """Save and restore `TrainState`s under `directory` (keep the last `max_to_keep`, plus every
    `keep_period`-th step if given)."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config"))

    def save(self, step: int, state: Any, config: dict | None = None, *, force: bool = False) -> bool:
        """Start saving `state` (and `config`) as `step`; returns whether a save was started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config or {}))
        return self.manager.save(int(step), args=args, force=force)

    def latest_step(self) -> int | None:
        """The newest complete step, or None when the directory holds none."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The complete steps on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state placed as `abstract_state` says, config) of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}; start a new run or point at "
                                    "the run directory that holds numbered step folders.")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} does not fit this run's state (a different method, "
                f"network shapes or optimizer?): {e}. Use a fresh directory for a different run."
            ) from e
        return restored.state, dict(restored.config)

    def restore_config(self, step: int | None = None) -> dict:
        """Only the config JSON of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored.config)

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's threads."""
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
