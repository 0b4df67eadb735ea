"""vLLM offline prefill throughput (issue 5): in-tree TP=2 vs TP=2 + EP through moecomm; same as ``moecomm bench vllm``."""

import sys

from moecomm.bench.vllm_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
