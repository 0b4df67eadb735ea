"""moecomm.bench: microbenchmarks (``moecomm bench``), the token-drop study and an EP-scale simulation.

Sections: :mod:`~moecomm.bench.kernels`, :mod:`~moecomm.bench.dispatch`, :mod:`~moecomm.bench.drop`,
:mod:`~moecomm.bench.simulate`; helpers: :mod:`~moecomm.bench.routing` (seeded skewed routing),
:mod:`~moecomm.bench.timing` (interleaved timing), :mod:`~moecomm.bench.report` (JSON / markdown),
:mod:`~moecomm.bench.plots` (PNG).
"""
