"""Training: state, the compiled two-timescale step, sharding, and the `Distiller` that runs it."""

from jaxdistill.train.checkpoint import Checkpointer
from jaxdistill.train.engine import Distiller
from jaxdistill.train.sharding import DEFAULT_RULES, make_mesh
from jaxdistill.train.state import TrainState, init_state, make_optimizer
from jaxdistill.train.step import Networks, Problem, make_train_step, split_networks

__all__ = ["DEFAULT_RULES", "Checkpointer", "Distiller", "Networks", "Problem", "TrainState", "init_state", "make_mesh",
           "make_optimizer", "make_train_step", "split_networks"]
