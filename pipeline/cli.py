"""`speechmed`: a thin command line over the driver, status, manifest and verify functions."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.sources import source_format

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.driver import RunResult, config_problems, execute, load_run_config
from pipeline.ingest import ingest_one
from pipeline.plan import INGEST
from pipeline.scheduler import PipelineError
from pipeline.status import run_status
from storage.fs import exists, resolve
from storage.lock import RunLocked
from storage.manifest import write_manifest
from storage.markers import PoolInfo, ShardSeal
from storage.rundir import RunDir
from storage.verify import verify

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True)

RunUri = Annotated[str, typer.Option("--run", help="run directory: a local path or a pyarrow.fs URI (s3://...)")]
Address = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address; default $RAY_ADDRESS, else a local Ray")]
AsJson = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]

EXIT_FAILED, EXIT_USAGE = 1, 2


def _fail(message: str, code: int) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _execute(config: PipelineConfig, uri: str, command: str, address: str | None, as_json: bool) -> None:
    """Run the pipeline with live progress, then print what it did."""
    stages = [INGEST, *(s.name for s in config.stages)]
    with Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                  TimeElapsedColumn(), console=err, disable=as_json, transient=False) as progress:
        tasks = {name: progress.add_task(name, total=config.num_shards) for name in stages}

        def on_progress(stage: str, event: object) -> None:
            if isinstance(event, ShardSeal):
                progress.advance(tasks[stage])

        rundir = RunDir(uri)
        progress.update(tasks[INGEST], completed=len(rundir.seals(INGEST)) if rundir.exists() else 0)
        try:
            result = execute(config, uri, command=command, ray_address=address, on_progress=on_progress)
        except RunLocked as exc:
            _fail(str(exc), EXIT_FAILED)
        except PipelineError as exc:
            _fail(f"{exc}", EXIT_FAILED)
        for name in stages:
            progress.update(tasks[name], completed=config.num_shards)
    _report(result, uri, as_json)


def _report(result: RunResult, uri: str, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"run": uri, **result.__dict__}))
        return
    if result.invalidated:
        out.print(f"re-ran changed stages and those after them: {', '.join(result.invalidated)}")
    if result.cleaned:
        out.print(f"removed {result.cleaned} uncommitted leftover file(s)")
    _print_status(uri)
    for name, rows in result.exports.items():
        out.print(f"exported [bold]{name}[/bold]: {rows} rows in {uri}/datasets/{name}/")
    out.print(f"done in {result.elapsed_s:.1f}s")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="pipeline config (YAML)")],
    run_uri: RunUri,
    address: Address = None,
    as_json: AsJson = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a pipeline into a run directory; on an existing run, redo only what changed."""
    _logging(verbose)
    try:
        cfg = load_config(str(config))
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    _execute(cfg, run_uri, f"speechmed run {config} --run {run_uri}", address, as_json)


@app.command()
def resume(
    run_uri: Annotated[str, typer.Argument(help="run directory")],
    address: Address = None,
    as_json: AsJson = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Finish an interrupted run with its recorded config; committed work is kept."""
    _logging(verbose)
    try:
        cfg = load_run_config(RunDir(run_uri))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    _execute(cfg, run_uri, f"speechmed resume {run_uri}", address, as_json)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds:.0f}s"


def _print_status(uri: str) -> None:
    status = run_status(RunDir(uri))
    table = Table(title=f"{uri} — {'running: ' + status.holder if status.running else 'not running'}")
    for column in ("stage", "shards", "in", "out", "rejected", "rows/s", "ETA", "GPUs", "GPU-h"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in status.stages:
        table.add_row(s.name, f"{s.shards_sealed}/{s.shards}", str(s.rows_in), str(s.rows_out), str(s.rows_rejected),
                      f"{s.rows_per_s:.1f}" if s.rows_per_s else "-", "done" if s.done else _fmt_eta(s.eta_s),
                      f"{s.num_gpus:g}" if s.num_gpus else "-", f"{s.gpu_hours:.3g}" if s.num_gpus else "-")
    out.print(table)
    out.print(f"ETA {'done' if all(s.done for s in status.stages) else _fmt_eta(status.eta_s)}; "
              f"GPU-hours so far {status.gpu_hours:.3g} (busy time of committed micro-batches × GPUs per actor)")


@app.command()
def status(run_uri: Annotated[str, typer.Argument(help="run directory")], as_json: AsJson = False) -> None:
    """Per-stage progress, throughput, ETA and GPU-hours so far, read from the run directory."""
    try:
        if as_json:
            out.print_json(json.dumps(run_status(RunDir(run_uri)).to_dict()))
        else:
            _print_status(run_uri)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_USAGE)


@app.command()
def manifest(run_uri: Annotated[str, typer.Argument(help="run directory")], as_json: AsJson = False) -> None:
    """Rebuild manifest.parquet from the commit markers and summarise it."""
    rundir = RunDir(run_uri)
    info = rundir.run_info()
    if info is None:
        _fail(f"{run_uri} is not a speechmed run (no run.json)", EXIT_USAGE)
    table = write_manifest(rundir, list(info.fingerprints))
    summary = run_status(rundir).to_dict()
    summary["manifest"] = f"{run_uri}/manifest.parquet"
    summary["parts"] = table.num_rows
    summary["bytes"] = sum(table.column("bytes").to_pylist())
    if as_json:
        out.print_json(json.dumps(summary))
        return
    _print_status(run_uri)
    for stage in summary["stages"]:
        for reason, n in sorted(stage["rejected_by_reason"].items()):
            out.print(f"  {stage['name']}: {n} rejected as {reason}")
    out.print(f"manifest: {summary['parts']} parts, {summary['bytes']} bytes → {summary['manifest']}")


@app.command(name="verify")
def verify_cmd(run_uri: Annotated[str, typer.Argument(help="run directory")], as_json: AsJson = False) -> None:
    """Check every file against its marker, the manifest against the markers, run.json's config
    against the run's fingerprints; exit 1 on any mismatch."""
    rundir = RunDir(run_uri)
    if not rundir.exists():
        _fail(f"{run_uri} is not a speechmed run (no run.json)", EXIT_USAGE)
    problems = verify(rundir) + config_problems(rundir)
    if as_json:
        out.print_json(json.dumps({"run": run_uri, "ok": not problems, "problems": [str(p) for p in problems]}))
    else:
        for p in problems:
            out.print(f"[red]✗[/red] {escape(str(p))}", highlight=False)
        out.print("[green]ok[/green]: every file matches its marker" if not problems else f"{len(problems)} problem(s)")
    if problems:
        raise typer.Exit(EXIT_FAILED)


@app.command(name="plan")
def plan_cmd(
    config: Annotated[Path, typer.Argument(help="pipeline config (YAML)")],
    calibrate: Annotated[int, typer.Option("--calibrate", min=1, help="records the calibration run processes, "
                                           "drawn from each source by its share of the full input")] = 256,
    calibration_run: Annotated[Optional[str], typer.Option(
        "--calibration-run", help="keep the calibration run here (reused if it exists); default a temporary local "
        "folder. On a cluster of several nodes give a URI every node reads (s3://...)")] = None,
    inputs_run: Annotated[Optional[str], typer.Option(
        "--inputs-run", help="commit the full ingest plan here to count the input, or reuse a finished one of this "
        "config (e.g. the real run's); default a temporary local folder")] = None,
    address: Address = None,
    as_json: AsJson = False,
) -> None:
    """GPU-hours and wall time of a full run: per-row costs from a short calibration run,
    extrapolated to the full input with the config's actors and GPUs."""
    from pipeline.costplan import PlanError, plan_run

    _logging(False)
    try:
        cfg = load_config(str(config))
        plan = plan_run(cfg, records=calibrate, calibration_uri=calibration_run, inputs_uri=inputs_run, address=address)
    except (ConfigError, PlanError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except (PipelineError, RunLocked) as exc:
        _fail(f"the calibration run failed: {exc}", EXIT_FAILED)
    if as_json:
        out.print_json(json.dumps(plan.to_dict()))
        return
    table = Table(title=f"{config}: {plan.inputs} input records, {cfg.num_shards} shards "
                  f"(calibrated on {plan.calibration['records']})")
    for column in ("stage", "actors × GPUs", "rows in", "pass", "s/row/actor", "wall", "GPU-hours"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in plan.stages:
        table.add_row(s.name, f"{s.actors} × {s.num_gpus:g}", str(s.rows_in),
                      f"{s.pass_ratio:.3f}" if s.pass_ratio is not None else "?",
                      f"{s.s_per_row:.4g}" if s.s_per_row is not None else "?", _fmt_eta(s.wall_s), f"{s.gpu_hours:.1f}")
    out.print(table)
    slowest = next((s for s in plan.stages if s.name == plan.bottleneck), None)
    out.print(f"wall time ≈ {_fmt_eta(plan.wall_s)}: planning {_fmt_eta(plan.plan_s)} + fill {_fmt_eta(plan.fill_s)} + "
              f"{slowest.name if slowest else '-'} {_fmt_eta(slowest.wall_s if slowest else 0)} (the slowest stage) "
              f"+ drain {_fmt_eta(plan.drain_s)}", soft_wrap=True)
    out.print(f"GPU-hours: {plan.gpu_hours:.1f} of work; {plan.gpu_hours_held:.1f} held by the run's actors", soft_wrap=True)
    out.print(f"model: {plan.model}", soft_wrap=True, highlight=False)
    for warning in plan.warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)


@app.command()
def ingest(
    source: Annotated[str, typer.Option("--source", help="the corpus format, e.g. sharegpt, meddg, cmb_exam")],
    path: Annotated[str, typer.Option("--path", help="a corpus file or folder (local or a pyarrow.fs URI)")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for accepted.parquet and rejected.parquet")],
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="a format option KEY=VALUE (YAML value); repeatable")] = None,
    as_json: AsJson = False,
) -> None:
    """Read one corpus with its adapter (no Ray): counts read / written / rejected by reason."""
    try:
        fmt = source_format(source)
        options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in option or [])}
        fmt.Options.model_validate(options)
    except (KeyError, ValueError) as exc:
        _fail(str(exc.args[0] if isinstance(exc, KeyError) else exc).replace("\n", " "), EXIT_USAGE)
    if not exists(resolve(path), resolve(path).root):
        _fail(f"no such file or folder: {path}", EXIT_USAGE)
    report = ingest_one(source, path, out_dir, options=options)
    if as_json:
        out.print_json(json.dumps(report.__dict__))
        return
    out.print(f"{report.source}: read {report.read}, written {report.written}, rejected {report.rejected}")
    for reason, n in report.by_reason.items():
        out.print(f"  {n:>8}  {reason}")
    out.print(f"→ {report.outputs['accepted']}, {report.outputs['rejected']}")


@app.command(name="tiny-model")
def tiny_model(out_dir: Annotated[Path, typer.Argument(help="folder to write the model and tokenizer to")]) -> None:
    """Make the tiny random Qwen2-architecture model that tests and the demo use.

    Its answers are schema-valid (structured outputs) but meaningless: configure a real
    checkpoint (e.g. Qwen2.5-14B-Instruct) for real data."""
    from pipeline.tinymodel import make_tiny_model

    make_tiny_model(out_dir)
    out.print(f"wrote a tiny random Qwen2 model to {out_dir} (for tests and the demo; its outputs are meaningless)")


@app.command()
def demo(
    run_uri: Annotated[str, typer.Option("--run", help="run directory")] = "runs/demo",
    model: Annotated[Optional[Path], typer.Option(help="a chat checkpoint for the LLM stages (default: the tiny random model)")] = None,
    address: Address = None,
    as_json: AsJson = False,
) -> None:
    """Run the whole pipeline on the bundled sample with a local Ray and CPU engines."""
    _logging(False)
    if importlib.util.find_spec("vllm") is None:
        _fail("the demo's LLM stages need the CPU engines: pip install -e '.[local]' (see the README)", EXIT_USAGE)
    from pipeline.demo import demo_config, demo_model
    from pipeline.demo.voices import demo_voice_assets

    cfg = demo_config(model or demo_model(), *demo_voice_assets())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine: plenty for the sample
    if model is None:
        err.print("[yellow]note:[/yellow] the LLM stages run on a tiny random model: their answers are schema-valid "
                  "but meaningless, so most rewrites fail validation and are rejected with reasons. "
                  "Pass --model /path/to/Qwen2.5-7B-Instruct (or configure a real checkpoint) for real data.")
    _execute(cfg, run_uri, f"speechmed demo --run {run_uri}", address, as_json)
    if not as_json:
        out.print(f"load them: datasets.load_dataset('{run_uri}/datasets/TextMedDataset'), "
                  f"datasets.load_dataset('{run_uri}/datasets/SpeechMedDataset')", soft_wrap=True)


@app.command()
def train(
    stage: Annotated[str, typer.Option("--stage", help="1 (LLM core on text), 2a (projector + LLM core on speech in, "
                                       "text out, 1:1 with text Q&A) or 2b (speech generator on response units)")],
    run_uri: RunUri,
    model: Annotated[str, typer.Option("--model", help="a SpeechLM folder (training.model.assemble_speechlm, or an "
                                       "earlier stage's --out)")],
    out_dir: Annotated[Optional[str], typer.Option("--out", help="checkpoints and the trained model; default MODEL-stageSTAGE")] = None,
    max_steps: Annotated[int, typer.Option(help="optimizer steps (overrides --epochs when > 0)")] = -1,
    epochs: Annotated[float, typer.Option()] = 1.0,
    lr: Annotated[float, typer.Option("--lr", help="peak learning rate")] = 1e-5,
    lr_scheduler: Annotated[str, typer.Option(help="linear, cosine, constant or constant_with_warmup")] = "cosine",
    warmup_steps: Annotated[int, typer.Option()] = 0,
    weight_decay: Annotated[float, typer.Option()] = 0.0,
    batch_size: Annotated[int, typer.Option(help="examples per worker and step")] = 1,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps")] = 1,
    save_steps: Annotated[int, typer.Option(help="a checkpoint-<step> folder every N steps")] = 500,
    logging_steps: Annotated[int, typer.Option()] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[Optional[str], typer.Option(help="'latest' (newest checkpoint in --out) or a checkpoint folder")] = None,
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 mixed precision (GPUs)")] = False,
    workers: Annotated[int, typer.Option(help="Ray Train workers (one GPU each with --gpu)")] = 1,
    gpu: Annotated[bool, typer.Option("--gpu", help="train on GPUs")] = False,
    max_length: Annotated[int, typer.Option(help="longest example in LLM positions; longer dialogues are skipped")] = 4096,
    max_examples: Annotated[Optional[int], typer.Option(help="train on the first N examples only")] = None,
    text_dataset: Annotated[str, typer.Option(help="the run's text export")] = "TextMedDataset",
    speech_dataset: Annotated[str, typer.Option(help="the run's speech export")] = "SpeechMedDataset",
    local: Annotated[bool, typer.Option("--local", help="train in this process, without Ray Train")] = False,
    address: Address = None,
    as_json: AsJson = False,
) -> None:
    """Train a SpeechLM stage on a run's sealed exports (HF Trainer inside Ray Train's TorchTrainer)."""
    from pydantic import ValidationError

    from training.data import DataOptions, StageRefused
    from training.run import TrainOptions, preflight
    from training.run import train as run_training

    _logging(False)
    try:
        options = TrainOptions(
            stage=stage, run=run_uri, model=model, out=out_dir or f"{model.rstrip('/')}-stage{stage}",
            max_steps=max_steps, epochs=epochs, learning_rate=lr, lr_scheduler=lr_scheduler, warmup_steps=warmup_steps,
            weight_decay=weight_decay, batch_size=batch_size, grad_accum=grad_accum, save_steps=save_steps,
            logging_steps=logging_steps, seed=seed, resume=resume, bf16=bf16, workers=workers, gpu=gpu,
            data=DataOptions(text_dataset=text_dataset, speech_dataset=speech_dataset, max_length=max_length,
                             max_examples=max_examples, seed=seed))
        preflight(options)
    except ValidationError as exc:
        _fail("; ".join(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()), EXIT_USAGE)
    except (StageRefused, ValueError, FileNotFoundError) as exc:
        _fail(str(exc), EXIT_USAGE)
    try:
        # The Trainer prints its logs to stdout: keep stdout for the report (--json).
        with contextlib.redirect_stdout(sys.stderr):
            report = run_training(options, local=local, address=address)
    except StageRefused as exc:  # found once the data is read (e.g. no usable example)
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        out.print_json(report.model_dump_json())
        return
    table = Table("part", "trainable", "frozen", title=f"stage {report.stage}: parameters")
    for part, count in report.parts.items():
        table.add_row(part, f"{count.trainable:,}", f"{count.frozen:,}")
    out.print(table)
    losses = f"loss {report.losses[0]:.4f} → {report.losses[-1]:.4f}" if report.losses else "no loss logged"
    out.print(f"{report.steps} steps on {', '.join(f'{n} {k}' for k, n in report.examples.items())} examples, {losses}")
    if report.skipped:
        out.print("left out: " + ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items())))
    out.print(f"model and checkpoints in {report.out}")


voices_app = typer.Typer(no_args_is_help=True, help="The reference-voice pool (Aishell-2/3) that voice matching draws from.")
app.add_typer(voices_app, name="voices")


def _print_pool(pool: str, info: PoolInfo, as_json: bool) -> None:
    from pipeline.voices import read_voices

    table = read_voices(pool)
    mix = Counter(zip(table.column("gender").to_pylist(), table.column("age_group").to_pylist()))
    if as_json:
        out.print_json(json.dumps({"pool": pool, **info.model_dump(mode="json"),
                                   "clips_by_gender_age": {f"{g}/{a}": n for (g, a), n in sorted(mix.items())}}))
        return
    out.print(f"[bold]{pool}[/bold]: {info.clips} clips from {info.speakers} speakers "
              f"({', '.join(f'{c}: {r}' for c, r in info.corpora.items())})", soft_wrap=True)
    grid = Table("gender", "age group", "clips")
    for (gender, age), n in sorted(mix.items()):
        grid.add_row(gender, age, str(n))
    out.print(grid)
    if info.excluded_by_reason:
        out.print("excluded: " + ", ".join(f"{r} {n}" for r, n in sorted(info.excluded_by_reason.items()))
                  + f" (details: {pool}/excluded.parquet)", soft_wrap=True)


@voices_app.command("build")
def voices_build(
    out_dir: Annotated[str, typer.Option("--out", help="pool folder to write (local path or URI)")],
    aishell2: Annotated[Optional[str], typer.Option(help="Aishell-2 root (holds iOS/data/)")] = None,
    aishell3: Annotated[Optional[str], typer.Option(help="Aishell-3 root (holds spk-info.txt, train/, test/)")] = None,
    as_json: AsJson = False,
) -> None:
    """Index every usable clip with its speaker's gender, age group and accent."""
    from pipeline.voices import build_pool

    corpora = {name: root for name, root in (("aishell2", aishell2), ("aishell3", aishell3)) if root}
    if not corpora:
        _fail("give at least one of --aishell2 ROOT and --aishell3 ROOT", EXIT_USAGE)
    for name, root in corpora.items():
        if not exists(resolve(root), resolve(root).root):
            _fail(f"--{name} {root}: no such folder", EXIT_USAGE)
    try:
        info = build_pool(corpora, out_dir)  # type: ignore[arg-type]
    except FileNotFoundError as exc:  # a root without the corpus's files: nothing was written
        _fail(str(exc), EXIT_USAGE)
    _print_pool(out_dir, info, as_json)


@voices_app.command("show")
def voices_show(pool: Annotated[str, typer.Argument(help="pool folder")], as_json: AsJson = False) -> None:
    """Clips by gender and age group, and what was excluded and why."""
    from pipeline.voices import read_pool_info

    try:
        info = read_pool_info(pool)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_USAGE)
    _print_pool(pool, info, as_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
