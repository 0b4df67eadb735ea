"""One DP rank of an offline data-parallel vLLM engine group (vLLM's SPMD offline DP), used by the tests.

Usage: python vllm_dp_driver.py '<json spec>' ; spec keys as vllm_driver.py's (model, ep, additional_config,
prompts: this rank's prompts, possibly none, out, max_tokens) plus dp_rank, dp_size, master_port, and
done_dir: after writing its result a rank waits (bounded) until every rank has, so that an idle rank's engine
keeps joining the busy ranks' MoE steps with its dummy batches until they are done.
"""

import json
import os
import sys

from moecomm.testing.procs import dp_rank_env, wait_for_dp_peers


def main(spec: dict) -> None:
    rank, size = spec["dp_rank"], spec["dp_size"]
    os.environ.update(dp_rank_env(rank, size, spec["master_port"]))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(r) for r in range(size)))
    from vllm_driver import make_llm

    from vllm import SamplingParams

    llm = make_llm(spec)
    params = SamplingParams(max_tokens=spec.get("max_tokens", 2), temperature=0, detokenize=False)
    result = []
    if spec["prompts"]:
        outputs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params)
        result = [{"generated": list(out.outputs[0].token_ids)} for out in outputs]
    with open(spec["out"], "w") as f:
        json.dump(result, f)
    wait_for_dp_peers(spec["done_dir"], rank, size, spec.get("wait_s", 300))
    print("DRIVER_DONE", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
