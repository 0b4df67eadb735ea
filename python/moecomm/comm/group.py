"""Deprecated aliases (one release): ``EPGroup`` is the ``torch`` transport, :class:`TorchTransport`."""

from moecomm.comm.transports.base import CommStepError
from moecomm.comm.transports.torch_dist import BACKEND_DEVICE, TorchTransport

EPGroup = TorchTransport

__all__ = ["CommStepError", "EPGroup", "BACKEND_DEVICE"]
