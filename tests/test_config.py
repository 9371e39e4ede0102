"""Config validation: one line per problem naming the file and the key path, exit code 2,
and nothing written. The CLI cases fail before Ray is started."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError, PipelineConfig, load_config, parse_config

DEMO = files("pipeline") / "demo" / "demo.yaml"

BASE = {
    "seed": 7,
    "num_shards": 2,
    "sources": [{"name": "mine", "format": "sharegpt", "path": "data.json"}],
    "stages": [{"name": "prefilter", "kind": "prefilter", "params": {"min_patient_chars": 4},
                "resources": {"actors": 1}}],
    "exports": [{"name": "Out", "stage": "prefilter"}],
}


def write_config(tmp_path: Path, config: dict | str, name: str = "config.yaml") -> Path:
    (tmp_path / "data.json").write_text(json.dumps([]), encoding="utf-8")
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def with_change(path: str, value, base: dict = BASE) -> dict:
    """BASE with `value` set at a dotted path (`stages.0.params.x`); value DELETE removes the key."""
    config = copy.deepcopy(base)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = config
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return config


DELETE = object()


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    return str(exc.value).splitlines()


# -- valid configs -----------------------------------------------------------------------

def test_demo_config_parses():
    from pipeline.demo import demo_config

    config = demo_config(Path("/models/Qwen2.5-7B-Instruct"), Path("/cache/pool"), Path("/cache/coughs"))
    assert isinstance(config, PipelineConfig)
    assert (config.seed, config.num_shards, config.ingest_part_size) == (20261125, 4, 64)
    (source,) = config.sources
    assert source.format == "sharegpt"
    assert Path(source.path).is_absolute() and Path(source.path).is_file()
    assert source.path == str(Path(str(DEMO)).resolve().parent / "sample_consultations.json")
    assert [(s.name, s.kind) for s in config.stages] == [
        ("prefilter", "prefilter"), ("filter", "llm_filter"), ("rewrite", "rewrite"), ("normalize", "normalize"),
        ("demographics", "demographics"), ("voice", "voice_match"), ("speak", "synthesize")]
    llm = [s for s in config.stages if s.kind in ("llm_filter", "rewrite", "demographics")]
    assert {s.params["engine"]["model"] for s in llm} == {"/models/Qwen2.5-7B-Instruct"}
    assert config.stages[5].params["pool"] == "/cache/pool" and config.stages[6].params["cough_dir"] == "/cache/coughs"
    assert config.stages[0].resources.actors == 1 and config.stages[0].micro_batch_size == 8
    assert [(e.name, e.stage, e.sharegpt) for e in config.exports] == [
        ("TextMedDataset", "demographics", False), ("SpeechMedDataset", "speak", True)]


def test_relative_source_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    path = write_config(tmp_path, BASE)
    monkeypatch.chdir(tmp_path.parent)
    config = load_config(str(path))
    assert config.sources[0].path == str((tmp_path / "data.json").resolve())


def test_defaults():
    minimal = {"sources": [{"name": "s", "format": "sharegpt", "path": str(Path(str(DEMO)))}]}
    config = parse_config(minimal, base_dir=None, origin="inline")
    assert (config.seed, config.num_shards, config.stages, config.exports) == (0, 8, [], [])
    assert config.sources[0].treatment is None  # the format's default applies
    assert config.sources[0].ref().treatment == "consultation"
    assert (config.sources[0].sample_ratio, config.sources[0].limit) == (1.0, None)


# -- one problem at a time -----------------------------------------------------------------

CASES = [
    # (id, change path, value, key path reported, fragment of the message)
    ("unknown-top-level-key", "bogus", 1, "bogus", "unknown key (allowed: seed, num_shards"),
    ("unknown-stage-key", "stages.0.batch", 8, "stages[0].batch", "unknown key (allowed: name, kind"),
    ("unknown-param", "stages.0.params.min_chars", 4, "stages[0].params.min_chars",
     "unknown key (allowed: min_patient_chars, min_chinese_ratio"),
    ("unknown-resource", "stages.0.resources.gpus", 1, "stages[0].resources.gpus", "unknown key (allowed: actors"),
    ("wrong-type-top-level", "num_shards", "many", "num_shards", "valid integer"),
    ("wrong-type-param", "stages.0.params.min_patient_chars", "six", "stages[0].params.min_patient_chars",
     "valid integer"),
    ("wrong-type-param-float", "stages.0.params.min_chinese_ratio", "half", "stages[0].params.min_chinese_ratio",
     "valid number"),
    ("out-of-range", "stages.0.resources.actors", 0, "stages[0].resources.actors", "greater than or equal to 1"),
    ("missing-source-path", "sources.0.path", "missing.json", "sources[0].path", "no such file"),
    ("unknown-stage-kind", "stages.0.kind", "llm_judge", "stages[0].kind", "unknown stage kind 'llm_judge'"),
    ("unknown-format", "sources.0.format", "alpaca", "sources[0].format", "unknown format 'alpaca'"),
    ("bad-treatment", "sources.0.treatment", "surgery", "sources[0].treatment", "'consultation'"),
    ("missing-required", "sources.0.name", DELETE, "sources[0].name", "required key is missing"),
    ("bad-stage-name", "stages.0.name", "Pre Filter", "stages[0].name", "pattern"),
    ("export-of-unknown-stage", "exports.0.stage", "rewrite", "(top level)", "reads unknown stage 'rewrite'"),
    ("stage-named-ingest", "stages.0.name", "ingest", "(top level)", "not 'ingest'"),
]


@pytest.mark.parametrize("change, value, key, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_is_one_line_naming_file_and_key(tmp_path, change, value, key, fragment):
    path = write_config(tmp_path, with_change(change, value))
    (line,) = problems(path)
    assert line.startswith(f"{path}: {key}: "), line
    assert fragment in line


def test_several_problems_one_line_each(tmp_path):
    config = with_change("bogus", 1)
    config = with_change("num_shards", "many", config)
    config = with_change("sources.0.path", "missing.json", config)
    config = with_change("stages.0.params.min_patient_chars", "six", config)
    config = with_change("stages.0.params.min_chars", 3, config)
    config["stages"].append({"name": "judge", "kind": "llm_judge"})
    path = write_config(tmp_path, config)
    lines = problems(path)
    keys = sorted(line.removeprefix(f"{path}: ").split(": ")[0] for line in lines)
    assert keys == sorted(["bogus", "num_shards", "sources[0].path", "stages[0].params.min_patient_chars",
                           "stages[0].params.min_chars", "stages[1].kind"])


@pytest.mark.parametrize("text, fragment", [
    ("seed: [1, 2\n", "not valid YAML"),
    ("seed: 1\n  bad indent: 2\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping of keys, got list"),
    ("", "must be a mapping of keys, got NoneType"),
])
def test_unparseable_files(tmp_path, text, fragment):
    path = write_config(tmp_path, text)
    (line,) = problems(path)
    assert line.startswith(f"{path}: ") and fragment in line


def test_missing_config_file(tmp_path):
    (line,) = problems(tmp_path / "nope.yaml")
    assert line.startswith(f"{tmp_path / 'nope.yaml'}: cannot read config")


def test_parse_config_validates_params_without_the_cli():
    """The stage's own parameter model validates `params` for any caller (e.g. a resume)."""
    raw = with_change("stages.0.params.min_chars", 1)
    raw["sources"][0]["path"] = str(DEMO)
    with pytest.raises(ValueError, match="min_chars: unknown key"):
        PipelineConfig.model_validate(raw)


# -- through the command line --------------------------------------------------------------

runner = CliRunner()


def cli_run(config: Path, run_dir: Path):
    return runner.invoke(app, ["run", str(config), "--run", str(run_dir)])


CLI_CASES = [
    ("unknown-key", with_change("stages.0.params.min_chars", 1), ["stages[0].params.min_chars: unknown key"]),
    ("wrong-type", with_change("stages.0.params.min_patient_chars", "six"),
     ["stages[0].params.min_patient_chars: Input should be a valid integer"]),
    ("missing-source", with_change("sources.0.path", "gone.json"), ["sources[0].path: no such file"]),
    ("unknown-kind", with_change("stages.0.kind", "llm_judge"), ["stages[0].kind: unknown stage kind"]),
    ("invalid-yaml", "sources: [unclosed\n", ["not valid YAML"]),
    ("several", with_change("num_shards", 0, with_change("bogus", True)),
     ["bogus: unknown key", "num_shards: Input should be greater than or equal to 1"]),
]


@pytest.mark.parametrize("config, expected", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_run_rejects_bad_config(tmp_path, config, expected):
    path = write_config(tmp_path, config)
    run_dir = tmp_path / "run"
    result = cli_run(path, run_dir)
    assert result.exit_code == 2, result.output
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == len(expected), lines
    for line, fragment in zip(sorted(lines), sorted(expected)):
        assert line.startswith(f"{path}: "), line
        assert fragment in line, line
    assert not run_dir.exists()
    assert result.stdout == ""


def test_cli_missing_config_file(tmp_path):
    result = cli_run(tmp_path / "absent.yaml", tmp_path / "run")
    assert result.exit_code == 2
    assert "absent.yaml" in result.stderr
    assert not (tmp_path / "run").exists()


def test_console_script_rejects_bad_config(tmp_path):
    """The installed `speechmed` entry point, in a fresh process."""
    path = write_config(tmp_path, with_change("stages.0.params.min_patient_chars", "six"))
    run_dir = tmp_path / "run"
    exe = shutil.which("speechmed")
    command = [exe] if exe else [sys.executable, "-m", "pipeline.cli"]
    proc = subprocess.run([*command, "run", str(path), "--run", str(run_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: stages[0].params.min_patient_chars: " in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not run_dir.exists()


# -- run.json's config against the run's fingerprints (`speechmed verify`) ----------------

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "demo" / "sample_consultations.json"


def _recorded_run(run: Path) -> None:
    """run.json as `speechmed run` writes it, for a prefilter → normalize pipeline (no Ray)."""
    from pipeline.driver import stage_fingerprints
    from storage.markers import RunInfo
    from storage.rundir import RUN_JSON, RunDir

    config = parse_config({"seed": 3, "sources": [{"name": "s", "format": "sharegpt", "path": str(SAMPLE)}],
                           "stages": [{"name": "prefilter", "kind": "prefilter"},
                                      {"name": "normalize", "kind": "normalize"}]}, base_dir=None, origin="test")
    info = RunInfo(config=config.model_dump(mode="json"), seed=3, fingerprints=stage_fingerprints(config),
                   code_version="test", created_at=0.0, updated_at=0.0)
    RunDir(str(run)).write_model(RUN_JSON, info)


def _edit_run_json(run: Path, edit) -> None:
    path = run / "run.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    edit(info)
    path.write_text(json.dumps(info), encoding="utf-8")


@pytest.mark.parametrize("edit, stage, redo", [
    (lambda info: info["config"]["stages"][0].update(micro_batch_size=99), "prefilter", "prefilter, normalize"),
    (lambda info: info["config"].update(seed=4), "ingest", "ingest, prefilter, normalize"),
    (lambda info: info["fingerprints"].update(normalize="0" * 16), "normalize", "normalize"),
])
def test_verify_names_the_stage_an_edited_run_json_would_make_resume_redo(tmp_path: Path, edit, stage: str,
                                                                          redo: str) -> None:
    from pipeline.driver import config_problems
    from storage.rundir import RunDir

    run = tmp_path / "run"
    _recorded_run(run)
    assert config_problems(RunDir(str(run))) == []
    _edit_run_json(run, edit)
    (problem,) = config_problems(RunDir(str(run)))
    assert problem.path == "run.json"
    assert f"gives stage {stage} another fingerprint" in problem.what and f"would redo {redo};" in problem.what
    result = CliRunner().invoke(app, ["verify", str(run)])
    assert result.exit_code == 1 and f"stage {stage}" in result.output


def test_verify_reports_a_run_json_config_that_no_longer_parses(tmp_path: Path) -> None:
    from pipeline.driver import config_problems
    from storage.rundir import RunDir

    run = tmp_path / "run"
    _recorded_run(run)
    _edit_run_json(run, lambda info: info["config"]["stages"][0].update(kind="no_such_stage"))
    (problem,) = config_problems(RunDir(str(run)))
    assert problem.path == "run.json" and "not a valid pipeline config" in problem.what


def test_verify_reads_a_recorded_config_whose_sources_have_moved(tmp_path: Path, monkeypatch) -> None:
    """The config is read back without looking for its sources: verifying a copied run, or
    one whose inputs were since archived, is not a problem."""
    from pipeline.driver import config_problems
    from storage.rundir import RunDir

    source = tmp_path / "in.json"
    shutil.copy(SAMPLE, source)
    monkeypatch.setitem(globals(), "SAMPLE", source)
    _recorded_run(tmp_path / "run")
    source.unlink()
    assert config_problems(RunDir(str(tmp_path / "run"))) == []


def test_a_run_starting_removes_the_finished_runs_manifest(tmp_path: Path) -> None:
    """The manifest describes a finished run; a run starting (or resuming) may drop stages and
    add parts, so `prepare` removes it and the run writes it again when it finishes."""
    from pipeline.driver import load_run_config, prepare, stage_fingerprints
    from storage.manifest import write_manifest
    from storage.rundir import RunDir

    run = tmp_path / "run"
    _recorded_run(run)
    rundir = RunDir(str(run))
    write_manifest(rundir, ["ingest"])
    assert (run / "manifest.parquet").exists()
    config = load_run_config(rundir)
    prepare(rundir, config, stage_fingerprints(config))
    assert not (run / "manifest.parquet").exists()
