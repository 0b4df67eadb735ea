"""moecomm.bench: microbenchmarks (``moecomm bench``), the token-drop study and an EP-scale simulation.

Sections: :mod:`~moecomm.bench.kernels`, :mod:`~moecomm.bench.dispatch`, :mod:`~moecomm.bench.drop`,
:mod:`~moecomm.bench.simulate`; helpers: :mod:`~moecomm.bench.routing` (seeded skewed routing),
:mod:`~moecomm.bench.timing` (interleaved timing), :mod:`~moecomm.bench.report` (JSON / markdown),
:mod:`~moecomm.bench.plots` (PNG), :mod:`~moecomm.bench.traffic` (rows crossing ranks) and
:mod:`~moecomm.bench.traffic_study` (traffic per token of real routing shapes); dispatch peers:
:mod:`~moecomm.bench.torch_peer`, :mod:`~moecomm.bench.megatron_peer`, :mod:`~moecomm.bench.shm_copy`,
chosen by :mod:`~moecomm.bench.dispatch_cases`.
"""
