"""``python -m moecomm.bench ...``: the same as ``moecomm bench ...``."""

import sys

from moecomm.bench.cli import main

sys.exit(main())
