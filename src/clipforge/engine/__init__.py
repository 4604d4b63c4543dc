"""The training engine under every clipforge task: a task supplies its model, optimiser(s), data and
``training_step``; :func:`fit` does the rest (see :mod:`clipforge.engine.task`)."""

from clipforge.engine.context import StepContext
from clipforge.engine.loop import EngineConfig, FitResult, TrainingDiverged, fit
from clipforge.engine.task import Task

__all__ = ["EngineConfig", "FitResult", "StepContext", "Task", "TrainingDiverged", "fit"]
