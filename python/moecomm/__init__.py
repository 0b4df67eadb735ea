"""moecomm: a native-extension runtime for Mixture-of-Experts expert parallelism."""

from moecomm import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
