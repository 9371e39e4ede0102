"""Ingest streaming memory: the `huatuo_sft` adapter's peak RSS must not grow with the input.

Writes two HuatuoGPT2-SFT-shaped JSON arrays (original text, about 1.75 KB a record like the
published file: 246 MB / 140k): N records and scale × N (defaults: 60,000 and 600,000,
about 0.1 and 1 GB), each written as a stream, under a temporary folder deleted at the
end. Then, in a fresh child process per input, iterates the adapter over the file and
counts what it yields. The child's peak RSS comes from `os.wait4` (its own rusage, not the
maximum over every child); MB/s and records/s are timed inside the child, from the first
read to the last item, so interpreter start-up and imports are not counted. The file was
just written, so it is read from the page cache: the figures are parse + map + validate
throughput, not disk speed. A third child only imports the adapter: its RSS is the floor.
Target: peak RSS of the large input / the small one ≤ 1.2.

    python benchmarks/ingest_memory.py [--records 60000] [--scale 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine

# The child: read the file named in argv[1] (none: import only), print counts and timing.
CHILD = """
import json, sys, time
from actors.sources import SourceOptions, SourceRef
from actors.sources.huatuo import HuatuoSFT
result = {"items": 0, "dialogues": 0, "failures": 0, "seconds": 0.0}
if len(sys.argv) > 1:
    ref = SourceRef("bench", sys.argv[1], HuatuoSFT.default_treatment, SourceOptions())
    started = time.perf_counter()
    for item in HuatuoSFT().read(ref):
        result["items"] += 1
        result["dialogues" if item.dialogue is not None else "failures"] += 1
    result["seconds"] = time.perf_counter() - started
print(json.dumps(result))
"""

_SYMPTOMS = ["头疼", "咳嗽", "腹胀", "失眠", "腰痛", "皮疹", "胸闷", "耳鸣", "低热", "关节肿"]
_ADVICE = ("一般来说，这种情况与作息不规律、饮食结构和近期压力都有一定关系。建议先记录症状出现的时间、持续多久、"
           "有没有诱因，以及是否伴随发热、体重下降或夜间加重等表现。日常注意规律作息，清淡饮食，适量运动，"
           "避免自行长期服用止痛药或抗生素。如果症状持续超过两周没有缓解，或者出现明显加重，"
           "请及时到相应专科门诊就诊，必要时完善血常规、影像学等检查，由医生结合检查结果制定方案。")


def bytes_per_record() -> int:
    return len(json.dumps(_record(123_456), ensure_ascii=False).encode("utf-8")) + 1


def _record(i: int) -> dict:
    symptom = _SYMPTOMS[i % len(_SYMPTOMS)]
    question = (f"医生您好，我今年{18 + i % 60}岁，最近{i % 13 + 2}天一直{symptom}，"
                f"白天还好晚上明显一些，吃了点药效果不大，想问问需要做什么检查？（编号{i}）")
    answer = (f"您好，根据您描述的{symptom}情况，" + _ADVICE * 2 + "另外，如果您有高血压、糖尿病等基础疾病，"
              "或者正在服用其他药物，就诊时请把用药清单带上，方便医生判断药物之间是否有相互作用，"
              f"也请留意{symptom}是否在服药后出现变化。（第{i % 97}条参考意见）")
    return {"id": f"bench_sft_{i:08d}", "conversations": [{"from": "human", "value": question},
                                                          {"from": "gpt", "value": answer}]}


def write_sft(path: Path, n: int) -> int:
    """A JSON array of `n` records, written one record at a time; returns its size."""
    with path.open("w", encoding="utf-8", buffering=1 << 20) as f:
        f.write("[\n")
        for i in range(n):
            f.write(("" if i == 0 else ",\n") + json.dumps(_record(i), ensure_ascii=False))
        f.write("\n]\n")
    return path.stat().st_size


def measure(path: Path | None) -> dict:
    """Run the child over `path` (None: import only); its counts plus its own peak RSS."""
    args = [sys.executable, "-c", CHILD] + ([str(path)] if path is not None else [])
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: nothing to drain while stdout is read
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child: its own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"child failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    result = json.loads(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=60_000, help="records of the small input")
    parser.add_argument("--scale", type=int, default=10, help="the large input has scale × records")
    parser.add_argument("--tmp", default=None, help="folder for the inputs (default: the system temp dir)")
    args = parser.parse_args()

    need = bytes_per_record() * args.records * (1 + args.scale)
    free = shutil.disk_usage(args.tmp or tempfile.gettempdir()).free
    if free < 1.2 * need:
        raise SystemExit(f"needs about {need / 1e9:.2f} GB free for the inputs, {free / 1e9:.2f} GB available")

    floor = measure(None)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="speechmed-ingest-mem-", dir=args.tmp) as folder:
        for name, n in (("small", args.records), ("large", args.records * args.scale)):
            path = Path(folder) / f"{name}-HuatuoGPT2-GPT4-SFT-140K.json"
            started = time.monotonic()
            size = write_sft(path, n)
            write_s = time.monotonic() - started
            result = measure(path)
            path.unlink()
            if (result["dialogues"], result["failures"]) != (n, 0):
                raise SystemExit(f"{name}: expected {n} dialogues and no failures, got {result}")
            runs[name] = {
                "records": n, "file_mb": round(size / 1e6, 1), "write_s": round(write_s, 1),
                "read_s": round(result["seconds"], 1),
                "mb_per_s": round(size / 1e6 / result["seconds"], 1),
                "records_per_s": round(n / result["seconds"]),
                "peak_rss_mb": round(result["peak_rss_mb"], 1),
                "peak_rss_above_import_mb": round(result["peak_rss_mb"] - floor["peak_rss_mb"], 1),
            }
    ratio = runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"]
    result = {
        "machine": machine(),
        "adapter": "huatuo_sft",
        "import_only_peak_rss_mb": round(floor["peak_rss_mb"], 1),
        **runs,
        "size_ratio": round(runs["large"]["file_mb"] / runs["small"]["file_mb"], 2),
        "peak_rss_ratio": round(ratio, 3),
    }
    print(json.dumps(result, indent=2))
    print(f"peak RSS {runs['large']['peak_rss_mb']:.1f} MB at {runs['large']['file_mb']:.0f} MB input vs "
          f"{runs['small']['peak_rss_mb']:.1f} MB at {runs['small']['file_mb']:.0f} MB: ratio {ratio:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
