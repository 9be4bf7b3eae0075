"""Checkpoints of the trainable state with orbax-checkpoint (design §5, jax-ecosystem §3).

One `CheckpointManager` per run directory; each step holds two items: `state` (the whole
`TrainState`: generator, critic, EMA, both optimizer states, step, RNG key) and `config` (the
resolved run configuration as JSON). The frozen teacher is never written. Saves are
asynchronous; orbax writes each step into a temporary folder and renames it when complete, so
a save killed half-way is never listed and resume takes the latest complete step. Restore goes
through an abstract target carrying the *new* run's shardings, so a checkpoint written on one
mesh restores onto any other mesh or device count. Before reading, the step's metadata is checked
against that target by array name and shape, so a checkpoint of another network fails with the
arrays that differ (and orbax starts no reads it would leave unfinished).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` placed on `shardings`: the restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{array name: shape}, each named as orbax names it in a checkpoint's metadata."""
    names = jax.tree.leaves(ocp.tree.get_param_names(tree, include_empty_nodes=False))
    return {name: tuple(x.shape) for name, x in zip(names, jax.tree.leaves(tree), strict=True)}


def _differences(saved: dict | None, wanted: dict, shown: int = 3) -> str:
    """What differs between a checkpoint's arrays and a run's, by name and shape ('' when nothing
    does, or when the checkpoint has no metadata and orbax's own checks are left to find it)."""
    if saved is None:
        return ""
    def listed(names, say):
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return [f"{', '.join(say(n) for n in names[:shown])}{more}"] if names else []
    reshaped = [n for n in wanted if n in saved and saved[n] != wanted[n]]
    missing = [n for n in wanted if n not in saved]
    extra = [n for n in saved if n not in wanted]
    return "; ".join(
        listed(reshaped, lambda n: f"{n} is {saved[n]} in the checkpoint, {wanted[n]} in this run")
        + listed(missing, lambda n: f"{n} {wanted[n]} is not in the checkpoint")
        + listed(extra, lambda n: f"{n} {saved[n]} is in the checkpoint, not in this run"))


class Checkpointer:
    """Save and restore `TrainState`s under `directory` (keep the last `max_to_keep`, plus every
    `keep_period`-th step if given)."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                               enable_async_checkpointing=async_save)
        handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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
        differences = _differences(self._saved_shapes(step), _shapes(abstract_state))
        if differences:  # found before orbax starts reading: the error names the arrays
            raise self._does_not_fit(step, differences)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except (ValueError, TypeError, KeyError) as e:
            raise self._does_not_fit(step, e) from e
        return restored.state, dict(restored.config)

    def _does_not_fit(self, step: int, why: Any) -> ValueError:
        return ValueError(f"checkpoint step {step} in {self.directory} does not fit this run's state (a different "
                          f"method, network shapes or optimizer?): {why}. Use a fresh directory for a different run.")

    def _saved_shapes(self, step: int) -> dict[str, tuple[int, ...]] | None:
        """{array name: shape} of step's state from its metadata file; None when it has none."""
        metadata = self.manager.item_metadata(step)["state"]
        if metadata is None:
            return None
        return {leaf.name: tuple(leaf.shape) for leaf in jax.tree.leaves(metadata)}

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
