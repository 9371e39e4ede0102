"""`speechmed train`: a stage's data and freeze policy handed to the Hugging Face Trainer,
inside Ray Train's TorchTrainer (several GPUs or nodes) or, with `local`, in this process.

Checkpoints follow the Trainer's conventions: `OUT/checkpoint-<step>/` every `save_steps`
(model, optimizer, scheduler, RNG and data-order state), resumed with `resume="latest"`
(the newest in OUT) or a checkpoint folder; the trained model and tokenizer are saved in
OUT at the end, loadable with `training.model.load_speechlm`. Under Ray, OUT must be a
folder every worker sees (a shared filesystem); Ray's own run state goes to OUT/ray.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.rundir import RunDir
from training.data import Collator, DataOptions, StageDataset, StageRefused, check_exports, load_stage_data
from training.freeze import PartCount, Stage, apply_freeze
from training.model import SpeechLMConfig, load_speechlm, speechlm_config


class TrainOptions(BaseModel):
    """Everything a training run is made from (what the CLI's options fill in)."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage
    run: str = Field(description="the pipeline run whose exports are read (local path or pyarrow.fs URI)")
    model: str = Field(description="a SpeechLM folder (training.model.assemble_speechlm, or an earlier stage's OUT)")
    out: str
    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = 1.0
    learning_rate: float = 1e-5
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 1  # per worker
    grad_accum: int = 1
    save_steps: int = 500
    logging_steps: int = 10
    seed: int = 0
    resume: str | None = Field(None, description="'latest' (newest checkpoint in out) or a checkpoint folder")
    bf16: bool = False
    workers: int = 1
    gpu: bool = False
    data: DataOptions = DataOptions()


class TrainReport(BaseModel):
    stage: Stage
    run: str
    model: str
    out: str
    parts: dict[str, PartCount]
    losses: list[float] = Field(description="the Trainer's logged training losses, one per logging step")
    mean_loss: float = Field(description="the Trainer's mean training loss over this call's steps")
    steps: int
    examples: dict[str, int]
    skipped: dict[str, int]
    workers: int
    ray: bool
    elapsed_s: float


def _speech_embeddings(config: SpeechLMConfig) -> int:
    """LLM positions one utterance takes: Whisper's 30 s window halved by its conv, / k."""
    return config.speech_encoder["max_source_positions"] // config.speech_encoder_ds_rate  # type: ignore[index]


def _resume_from(options: TrainOptions) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if options.resume is None:
        return None
    if options.resume == "latest":
        last = get_last_checkpoint(options.out) if Path(options.out).is_dir() else None
        if last is None:
            raise ValueError(f"--resume latest: no checkpoint-<step> folder in {options.out} to resume from")
        return last
    if not Path(options.resume).is_dir():
        raise ValueError(f"--resume {options.resume}: no such checkpoint folder")
    return options.resume


def fit(options: TrainOptions, *, on_ray: bool = False) -> TrainReport:
    """Train in this process (one worker of a Ray Train run, or alone)."""
    from transformers import Trainer, TrainingArguments

    started = time.time()
    resume = _resume_from(options)
    # fp32 master weights; --bf16 is the Trainer's mixed precision (autocast).
    model, tokenizer = load_speechlm(options.model)
    parts = apply_freeze(model, options.stage)
    data = load_stage_data(RunDir(options.run), options.stage, tokenizer, options.data,
                           speech_embeddings=_speech_embeddings(model.config))
    args = TrainingArguments(
        output_dir=options.out,
        max_steps=options.max_steps,
        num_train_epochs=options.epochs,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_steps,
        weight_decay=options.weight_decay,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        save_steps=options.save_steps,
        logging_steps=options.logging_steps,
        seed=options.seed,
        data_seed=options.seed,
        bf16=options.bf16,
        use_cpu=not options.gpu,
        report_to="none",
        remove_unused_columns=False,  # speech and unit_targets are model inputs
        # Stage II-a batches of text only leave the projector without gradients.
        ddp_find_unused_parameters=options.stage == "2a",
    )
    trainer = Trainer(model=model, args=args, train_dataset=StageDataset(data),
                      data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer)
    output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(options.out)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainReport(stage=options.stage, run=options.run, model=options.model, out=options.out, parts=parts,
                       losses=losses, mean_loss=output.training_loss, steps=trainer.state.global_step, examples=data.counts, skipped=data.skipped,
                       workers=options.workers, ray=on_ray, elapsed_s=round(time.time() - started, 2))


REPORT = "report.json"


def _ray_worker(config: dict) -> None:
    import ray.train

    report = fit(TrainOptions.model_validate(config["options"]), on_ray=True)
    # Ray Train keeps what a worker reports with a checkpoint: rank 0's report travels as one.
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"steps": report.steps})
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / REPORT).write_text(report.model_dump_json())
        ray.train.report({"steps": report.steps}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit_on_ray(options: TrainOptions, address: str | None = None) -> TrainReport:
    """`options.workers` Trainer processes under Ray Train's TorchTrainer (it sets up the
    process group the Trainer's DistributedDataParallel uses)."""
    from ray.train import RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    from pipeline.raycluster import ray_session

    out = Path(options.out).resolve()
    options = options.model_copy(update={"out": str(out)})
    with ray_session(address):
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"options": options.model_dump(mode="json")},
            scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=options.gpu),
            run_config=RunConfig(name=f"stage-{options.stage}", storage_path=str(out / "ray")),
        )
        try:
            result = trainer.fit()
        except WorkerGroupError as exc:
            # A refusal found on a worker (e.g. no usable example) is still a refusal.
            refused = [f for f in exc.worker_failures.values() if isinstance(f, StageRefused)]
            if refused:
                raise refused[0] from exc
            raise
        with result.checkpoint.as_directory() as folder:
            return TrainReport.model_validate_json((Path(folder) / REPORT).read_text())


def preflight(options: TrainOptions) -> None:
    """What can be refused before anything starts: the stage's exports (sealed, current),
    the model folder and the resume point. Raises StageRefused, ValueError or FileNotFoundError."""
    check_exports(RunDir(options.run), options.stage, options.data)
    config = speechlm_config(options.model)
    if options.stage == "2b" and config.speech_generator is None:
        raise ValueError(f"stage 2b trains the speech generator, and {options.model} has none "
                         "(assemble the model with a speech_generator)")
    _resume_from(options)


def train(options: TrainOptions, *, local: bool = False, address: str | None = None) -> TrainReport:
    """Preflight here (a refusal starts nothing), then fit locally or on Ray."""
    preflight(options)
    return fit(options) if local else fit_on_ray(options, address)
