"""One DP rank of an offline data-parallel vLLM engine group (vLLM's SPMD offline DP), used by the tests.

Usage: python vllm_dp_driver.py '<json spec>' ; spec keys as vllm_driver.py's (model, ep, additional_config,
prompts: this rank's prompts, possibly none, out, max_tokens) plus dp_rank, dp_size, master_port, and
done_dir: after writing its result a rank waits (bounded) until every rank has, so that an idle rank's engine
keeps joining the busy ranks' MoE steps with its dummy batches until they are done.
"""

import json
import os
import sys
import time


def main(spec: dict) -> None:
    rank, size = spec["dp_rank"], spec["dp_size"]
    os.environ.update(
        VLLM_DP_RANK=str(rank),
        VLLM_DP_RANK_LOCAL=str(rank),
        VLLM_DP_SIZE=str(size),
        VLLM_DP_MASTER_IP="127.0.0.1",
        VLLM_DP_MASTER_PORT=str(spec["master_port"]),
    )
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(r) for r in range(size)))
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=spec["model"],
        skip_tokenizer_init=True,
        enforce_eager=True,
        dtype="float32",
        enable_expert_parallel=spec["ep"],
        additional_config=spec.get("additional_config") or {},
        max_model_len=128,
        max_num_seqs=4,
        max_num_batched_tokens=256,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
    )
    params = SamplingParams(max_tokens=spec.get("max_tokens", 2), temperature=0, detokenize=False)
    result = []
    if spec["prompts"]:
        outputs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params)
        result = [{"generated": list(out.outputs[0].token_ids)} for out in outputs]
    with open(spec["out"], "w") as f:
        json.dump(result, f)
    open(os.path.join(spec["done_dir"], f"rank{rank}"), "w").close()
    deadline = time.monotonic() + spec.get("wait_s", 300)
    while len(os.listdir(spec["done_dir"])) < size:
        if time.monotonic() > deadline:
            raise SystemExit(f"DP rank {rank}: the other DP ranks did not finish within {spec.get('wait_s', 300)} s")
        time.sleep(0.5)
    print("DRIVER_DONE", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
