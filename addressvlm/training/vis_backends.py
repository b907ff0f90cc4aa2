"""mmengine visualizer backends the recipes name."""
import logging

from mmengine.logging import print_log
from mmengine.visualization import TensorboardVisBackend


class DroppedWrites:
    """Stands in for a ``SummaryWriter``: every call is accepted and nothing is written."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TensorboardIfInstalled(TensorboardVisBackend):
    """mmengine's TensorBoard backend; without the ``tensorboard`` package, one warning and nothing written, because
    a run must not fail at its first logged iteration for want of a viewer (``vis_data/scalars.json`` still gets
    every scalar; requirements.txt installs tensorboard)."""

    def _init_env(self):
        try:
            super()._init_env()
        except ImportError:
            print_log("TensorBoard is not installed (pip install tensorboard): scalars go to vis_data/scalars.json "
                      "only", logger="current", level=logging.WARNING)
            self._tensorboard = DroppedWrites()
