"""podnet: Kubernetes cluster networking in Python — read it, trace it, run it."""

from .cluster import Cluster
from .errors import InputError, PodnetError

__all__ = ["Cluster", "InputError", "PodnetError"]
__version__ = "0.1.0"
