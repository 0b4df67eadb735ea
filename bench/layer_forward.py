"""Layer forward benchmark (issue 4): EPMoE at EP=2 vs the transformers Qwen3-MoE block; same as ``moecomm bench layer``."""

import sys

from moecomm.bench.layer_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
