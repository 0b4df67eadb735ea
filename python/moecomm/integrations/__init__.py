"""Integrations of moecomm with other frameworks (transformers, vLLM, MindSpore)."""
