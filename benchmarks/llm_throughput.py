"""LLM stage throughput (issue 4, P1 and P2): the rewrite stage through the whole pipeline
against bare baselines on the same model, prompts, seeds and max tokens.

P1  the pipeline (`speechmed run`: ingest → rewrite, Ray actors, Parquet commits) vs one
    raw vLLM `LLM.generate` call over the same rendered prompts with the same structured
    outputs and seeds. Steady state: rows / processing window, where the pipeline's window
    runs from the start of its first micro-batch to its last commit (engine start-up
    excluded) and the baseline's is the `generate` call. Also reported with start-up: the
    pipeline's whole wall time vs `LLM(...)` construction plus `generate`. Target ≥ 0.90.
P2  the pipeline vs a paper-style loop: transformers `generate`, batch 1, one prompt after
    another, same sampling and max tokens (no structured outputs: the paper's scripts
    have none). The loop is linear in prompts, so it runs on a sample of them and its
    per-prompt time is scaled up. Target ≥ 20x.

    python benchmarks/llm_throughput.py [--rows 1024] [--max-tokens 512] [--model PATH]

Without --model it makes the tiny random Qwen2 model (the only one that exists offline);
with a real checkpoint the same script measures the real thing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ENV, REPO, machine, ray_cluster, write_config, write_dialogues

from actors.engines.llm import EngineConfig, Sampling
from storage.rundir import RunDir


def _stage(model: Path, args: argparse.Namespace) -> dict:
    return {"name": "rewrite", "kind": "rewrite", "micro_batch_size": args.batch,
            "params": {"engine": {"model": str(model), "enforce_eager": args.model is None, "max_model_len": 4096},
                       "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": args.max_tokens},
                       "max_attempts": 1},  # one answer per record, as the baseline
            "resources": {"actors": 1, "num_cpus": 1, "num_gpus": args.gpus, "parts_in_flight_per_actor": args.in_flight,
                          "max_shards_in_flight": 4, "batch_timeout_s": 3600}}


def _requests(run: Path, model: Path, args: argparse.Namespace) -> list:
    """The exact requests the rewrite stage made (first attempt), rebuilt from the run's
    ingested records with the stage's own code."""
    from actors.rewrite import RewriteStage
    from schemas import SourceDialogue, from_table

    rundir = RunDir(str(run))
    stage = RewriteStage("rewrite", RewriteStage.Params.model_validate(_stage(model, args)["params"]), run_seed=1)
    records = []
    for shard, seal in sorted(rundir.seals("ingest").items()):
        records += from_table(rundir.read_output("ingest", shard, seal.parts), SourceDialogue)
    return [stage.request(r, stage.prompt_for(r), 0) for r in records]


def pipeline_run(config: Path, run: Path, address: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config), "--run", str(run),
                           "--address", address, "--json"], cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"pipeline failed: {done.stderr[-3000:]}")
    commits = RunDir(str(run)).commits("rewrite").values()
    first_start = min(c.committed_at - c.elapsed_s for c in commits)
    last = max(c.committed_at for c in commits)
    return {"wall_s": wall, "window_s": last - first_start, "rows": sum(c.rows_in for c in commits)}


def raw_vllm(requests: list, config: EngineConfig) -> dict:
    from vllm import LLM

    from actors.engines.vllm_engine import engine_kwargs, sampling_params

    started = time.perf_counter()
    llm = LLM(**engine_kwargs(config))
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]
    loaded = time.perf_counter()
    outputs = llm.generate(prompts, [sampling_params(r) for r in requests], use_tqdm=False)
    finished = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    # The engine's ceiling without the grammar, for reading P2: the same prompts, free text.
    free = [sampling_params(r.model_copy(update={"json_schema": None})) for r in requests]
    free_started = time.perf_counter()
    free_outputs = llm.generate(prompts, free, use_tqdm=False)
    free_s = time.perf_counter() - free_started
    free_tokens = sum(len(o.outputs[0].token_ids) for o in free_outputs)
    del llm
    gc.collect()  # shuts the engine core process down; otherwise the interpreter waits on it at exit
    return {"load_s": loaded - started, "generate_s": finished - loaded, "rows": len(outputs), "output_tokens": tokens,
            "unconstrained_generate_s": free_s, "unconstrained_output_tokens": free_tokens}


def transformers_loop(requests: list, model: Path, sample: int) -> dict:
    """The paper's way: one prompt at a time through `model.generate`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, torch_dtype=dtype).to(device).eval()
    tokens, started = 0, time.perf_counter()
    for r in requests[:sample]:
        s: Sampling = r.sampling
        ids = tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True).to(device)
        torch.manual_seed(r.seed)
        with torch.inference_mode():
            out = lm.generate(**ids, max_new_tokens=s.max_tokens, do_sample=True, temperature=s.temperature, top_p=s.top_p,
                              pad_token_id=tokenizer.pad_token_id)
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    elapsed = time.perf_counter() - started
    return {"prompts": sample, "elapsed_s": elapsed, "s_per_prompt": elapsed / sample, "output_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="rewrite micro-batch size")
    parser.add_argument("--in-flight", type=int, default=5,
                        help="micro-batches in the engine at once: one more than max_num_seqs (256) holds keeps it full")
    parser.add_argument("--loop-sample", type=int, default=24, help="prompts the transformers loop runs")
    parser.add_argument("--model", type=Path, default=None, help="a real checkpoint (default: the tiny random model)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for the rewrite actor (1 on a GPU machine)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    ENV.setdefault("VLLM_CPU_KVCACHE_SPACE", os.environ["VLLM_CPU_KVCACHE_SPACE"])
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = args.model
        if model is None:
            from pipeline.tinymodel import make_tiny_model

            model = make_tiny_model(tmp / "tiny")
        source = write_dialogues(tmp / "in.json", args.rows)
        config = write_config(tmp / "cfg.yaml", source, [_stage(model, args)], num_shards=8, part_size=256)
        with ray_cluster() as address:
            pipe = pipeline_run(config, tmp / "run", address)
        requests = _requests(tmp / "run", model, args)
        engine = EngineConfig(model=str(model), enforce_eager=args.model is None, max_model_len=4096)
        raw = raw_vllm(requests, engine)
        loop = transformers_loop(requests, model, min(args.loop_sample, len(requests)))

    steady = (raw["rows"] / raw["generate_s"], pipe["rows"] / pipe["window_s"])
    cold = (raw["rows"] / (raw["load_s"] + raw["generate_s"]), pipe["rows"] / pipe["wall_s"])
    loop_rate = 1 / loop["s_per_prompt"]
    result = {
        "machine": machine(), "model": "tiny random Qwen2" if args.model is None else str(args.model),
        "rows": args.rows, "max_tokens": args.max_tokens, "micro_batch": args.batch, "in_flight": args.in_flight,
        "pipeline": pipe, "raw_vllm": raw, "transformers_loop": loop,
        "P1_steady_rows_per_s": {"raw": steady[0], "pipeline": steady[1], "ratio": steady[1] / steady[0]},
        "P1_with_startup_rows_per_s": {"raw": cold[0], "pipeline": cold[1], "ratio": cold[1] / cold[0]},
        "P2_rows_per_s": {"loop": loop_rate, "pipeline": steady[1], "ratio": steady[1] / loop_rate,
                          "ratio_with_startup": cold[1] / loop_rate},
        "P2_output_tokens_per_s": {"loop": loop["output_tokens"] / loop["elapsed_s"],
                                   "pipeline": raw["output_tokens"] / pipe["window_s"],
                                   "ratio": (raw["output_tokens"] / pipe["window_s"]) / (loop["output_tokens"] / loop["elapsed_s"])},
        "engine_ceiling_unconstrained_tokens_per_s": raw["unconstrained_output_tokens"] / raw["unconstrained_generate_s"],
        "tokens_per_prompt": {"structured (pipeline, raw)": raw["output_tokens"] / raw["rows"],
                              "free (loop)": loop["output_tokens"] / loop["prompts"]},
    }
    print(json.dumps(result, indent=2))
    print(f"P1 steady state: pipeline {steady[1]:.2f} rows/s vs raw LLM.generate {steady[0]:.2f} = {steady[1] / steady[0]:.3f} "
          f"(target >= 0.90); with start-up {cold[1] / cold[0]:.3f}")
    print(f"P2: pipeline {steady[1]:.2f} rows/s vs transformers batch-1 loop {loop_rate:.3f} = {steady[1] / loop_rate:.1f}x "
          f"(target >= 20x); with start-up {cold[1] / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
