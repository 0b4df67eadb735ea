"""Runs one offline vLLM engine on a tiny model and writes its prompt logprobs as JSON (used by the tests).

Usage: python vllm_driver.py '<json spec>' ; spec keys: model, tp, ep (bool), additional_config (dict|None),
prompts (list of token id lists), out (path), max_tokens.
"""

import json
import os
import sys


def make_llm(spec: dict):
    """The test engine of ``spec`` (model, tp (default 1), ep, additional_config): float32, eager, small."""
    from vllm import LLM

    return LLM(
        model=spec["model"],
        skip_tokenizer_init=True,
        enforce_eager=True,
        dtype="float32",
        tensor_parallel_size=spec.get("tp", 1),
        enable_expert_parallel=spec["ep"],
        additional_config=spec.get("additional_config") or {},
        max_model_len=128,
        max_num_seqs=4,
        max_num_batched_tokens=256,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
    )


def main(spec: dict) -> None:
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1" if spec["tp"] > 1 else "0")
    from vllm import SamplingParams

    llm = make_llm(spec)
    params = SamplingParams(max_tokens=spec.get("max_tokens", 2), temperature=0, prompt_logprobs=5, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params)
    result = []
    for out in outputs:
        positions = [
            {str(tok): lp.logprob for tok, lp in d.items()} if d is not None else None for d in out.prompt_logprobs
        ]
        result.append({"prompt_logprobs": positions, "generated": list(out.outputs[0].token_ids)})
    with open(spec["out"], "w") as f:
        json.dump(result, f)
    print("DRIVER_DONE", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
