"""vLLM plugin (work in progress)."""
def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group."""
