"""Training config: shipped files, validation messages, overrides and the `train` command's help."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from browser_control.cli import main
from browser_control.training.config import (
    LFM2_LORA_TARGET_MODULES,
    ConfigError,
    TrainConfig,
    load_config,
    parse_overrides,
)
from tests.conftest import REPO, subprocess_env

# The GPU configs of `make fine-tune-local`; the CPU ones of the learning benchmark (sft_*, learning_*: tiny
# local models, no vLLM) are loaded by test_the_learning_benchmark_configs_load below and tests/test_learning.py,
# those of `make demo` (demo_*) by tests/test_demo.py.
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith(("sft_", "learning_", "demo_")))
NO_ENV: dict[str, str] = {}  # load_config(environ=...) without the caller's BROWSERGYM_URL & co.


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# -- shipped configs -------------------------------------------------------------------------------


def test_the_five_configs_ship() -> None:
    names = {p.name for p in CONFIGS}
    assert {
        "lfm2_350m_local.yaml",
        "lfm2_350m_local_full.yaml",
        "lfm2_350m_local_lora.yaml",
        "lfm2_350m_book_flight.yaml",
        "miniwob_multitask.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path, environ=NO_ENV)
    assert config.model_name == "LiquidAI/LFM2-350M"
    # GPU configs generate with vLLM colocate; sleep mode crashes on DGX Spark.
    assert config.use_vllm and not config.vllm_enable_sleep_mode
    assert config.vllm_gpu_memory_utilization <= 0.3
    assert config.vllm_max_model_length is None or config.vllm_max_model_length >= config.max_completion_length
    # Every key in the file is a real key (load_config refuses unknown ones) and says something.
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(TrainConfig.model_fields)


def test_the_learning_benchmark_configs_load() -> None:
    from browser_control.sft.config import load_sft_config

    grpo = load_config(REPO / "configs" / "learning_grpo.yaml", environ=NO_ENV)
    assert not grpo.use_vllm and grpo.loss_type == "dapo" and grpo.mask_truncated_completions
    assert load_sft_config(str(REPO / "configs" / "sft_learning.yaml"), environ=NO_ENV).max_steps > 0


def test_shipped_configs_say_what_they_promise() -> None:
    debug = load_config(REPO / "configs/lfm2_350m_local.yaml", environ=NO_ENV)
    assert [t.name for t in debug.tasks] == ["click-test"] and debug.max_steps <= 20
    full = load_config(REPO / "configs/lfm2_350m_local_full.yaml", environ=NO_ENV)
    assert not full.use_peft and full.max_steps >= 100 and full.learning_rate == 1e-6
    lora = load_config(REPO / "configs/lfm2_350m_local_lora.yaml", environ=NO_ENV)
    assert lora.use_peft and set(lora.lora_target_modules) == set(LFM2_LORA_TARGET_MODULES)
    assert not {"o_proj", "gate_proj", "up_proj", "down_proj"} & set(lora.lora_target_modules)
    flight = load_config(REPO / "configs/lfm2_350m_book_flight.yaml", environ=NO_ENV)
    assert [t.name for t in flight.tasks] == ["book-flight"] and flight.max_episode_steps >= 8
    mix = load_config(REPO / "configs/miniwob_multitask.yaml", environ=NO_ENV)
    assert len(mix.tasks) >= 3 and len({t.weight for t in mix.tasks}) > 1 and mix.task_label == "mix"


def test_default_lora_targets_are_lfm2_modules() -> None:
    config = TrainConfig.model_validate({"tasks": ["click-test"]})
    assert config.lora_target_modules == ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]


# -- validation messages ---------------------------------------------------------------------------


def test_unknown_key_names_the_closest_valid_key_and_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tasks: [click-test]
        learning_rat: 1.0e-6
    """,
    )
    message = error_of(path)
    assert str(path) in message
    assert "unknown key 'learning_rat'" in message and "did you mean 'learning_rate'" in message


def test_unknown_key_inside_a_task_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks: [{nmae: click-test}]\n")
    message = error_of(path)
    assert "unknown key 'tasks.0.nmae'" in message and "did you mean 'name'" in message


def test_wrong_type_names_key_value_and_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tasks: [click-test]
        max_steps: ten
    """,
    )
    message = error_of(path)
    assert f"{path}: max_steps:" in message and "integer" in message and "'ten'" in message


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("max_steps: 0", "max_steps", "greater than or equal to 1"),
        ("learning_rate: -1.0e-6", "learning_rate", "greater than 0"),
        ("lora_dropout: 1.5", "lora_dropout", "less than 1"),
        ("vllm_gpu_memory_utilization: 1.5", "vllm_gpu_memory_utilization", "less than or equal to 1"),
        ("num_generations: 1", "num_generations", "greater than or equal to 2"),
        ("bf16: maybe", "bf16", "'auto'"),
        ("loss_type: ppo", "loss_type", "'dapo'"),
        ("run_name: ../escape", "run_name", "letters, digits"),
        ("browsergym_url: browsergym:8000", "browsergym_url", "http"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, key: str, words: str) -> None:
    path = write(tmp_path, f"tasks: [click-test]\n{line}\n")
    message = error_of(path)
    assert f"{path}: {key}:" in message and words in message


def test_group_must_fit_in_a_step(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tasks: [click-test]
        num_generations: 3
        per_device_train_batch_size: 4
    """,
    )
    message = error_of(path)
    assert "multiple of num_generations = 3" in message


def test_vllm_context_must_hold_prompt_and_completion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tasks: [click-test]
        use_vllm: true
        max_completion_length: 4096
        vllm_max_model_length: 4096
    """,
    )
    assert "must exceed max_completion_length" in error_of(path)


def test_duplicate_and_missing_tasks(tmp_path: Path) -> None:
    assert "listed twice" in error_of(write(tmp_path, "tasks: [click-test, miniwob.click-test]\n"))
    assert "tasks: Field required" in error_of(write(tmp_path, "max_steps: 3\n"))
    assert "at least 1 item" in error_of(write(tmp_path, "tasks: []\n"))


def test_bad_yaml_syntax_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks: [click-test\nmax_steps: 3\n")
    message = error_of(path)
    assert str(path) in message and "invalid YAML at line" in message


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping" in error_of(write(tmp_path, "- click-test\n"))


def test_missing_file_lists_the_shipped_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    message = error_of(tmp_path / "nope.yaml")
    assert "no such config file" in message and "configs/lfm2_350m_local.yaml" in message


def test_task_forms_and_weights(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tasks:
          - click-test
          - {name: miniwob.click-button, weight: 3}
    """,
    )
    config = load_config(path, environ=NO_ENV)
    assert [(t.name, t.weight) for t in config.tasks] == [("click-test", 1.0), ("click-button", 3.0)]
    assert "weight: Input should be greater than 0" in error_of(
        write(tmp_path, "tasks: [{name: click-test, weight: 0}]\n")
    ).replace("tasks.0.", "")


# -- overrides ----------------------------------------------------------------------------------------


def test_env_vars_override_the_file_and_set_overrides_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tasks: [click-test]
        browsergym_url: http://127.0.0.1:8000
        checkpoint_dir: ckpt
        logging_dir: logs
    """,
    )
    environ = {
        "BROWSERGYM_URL": "http://browsergym:8000/",
        "CHECKPOINT_DIR": "/model_checkpoints",
        "LOGGING_DIR": "/logs",
    }
    config = load_config(path, environ=environ)
    assert config.browsergym_url == "http://browsergym:8000"
    assert config.checkpoint_dir == "/model_checkpoints" and config.logging_dir == "/logs"
    config = load_config(
        path, ["checkpoint_dir=/elsewhere", "max_steps=7", "tasks=[a, b]", "use_vllm=true"], environ=environ
    )
    assert config.checkpoint_dir == "/elsewhere" and config.max_steps == 7 and config.use_vllm
    assert [t.name for t in config.tasks] == ["a", "b"]


def test_set_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks: [click-test]\n")
    assert "--set: unknown key 'max_setps'" in error_of(path, overrides=["max_setps=3"])
    assert "did you mean 'max_steps'" in error_of(path, overrides=["max_setps=3"])
    assert "expected KEY=VALUE" in error_of(path, overrides=["max_steps"])
    assert "max_steps" in error_of(path, overrides=["max_steps=abc"])
    assert parse_overrides(["resume_from_checkpoint=true", "run_name=x"]) == {
        "resume_from_checkpoint": True,
        "run_name": "x",
    }


def test_derived_names() -> None:
    one = TrainConfig.model_validate({"tasks": ["miniwob.click-test"], "model_name": "LiquidAI/LFM2-350M"})
    assert (one.model_short_name, one.task_label) == ("lfm2-350m", "click-test")
    two = TrainConfig.model_validate({"tasks": ["click-test", "click-button"], "model_name": "/m/Tiny/"})
    assert (two.model_short_name, two.task_label) == ("tiny", "mix")
    assert TrainConfig.model_validate(yaml.safe_load(one.to_yaml())) == one


# -- the command line --------------------------------------------------------------------------------


def test_train_help_teaches_without_importing_torch() -> None:
    code = textwrap.dedent("""
        import contextlib, io, sys
        from browser_control.cli import build_parser
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args(["train", "--help"])
        heavy = sorted(m for m in ("torch", "trl", "transformers", "datasets") if m in sys.modules)
        print(out.getvalue())
        print("HEAVY:", heavy)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120, check=True
    )
    text = result.stdout
    assert "HEAVY: []" in text
    assert "browser-control train --config configs/lfm2_350m_local.yaml" in text  # examples
    for env_var in ("BROWSERGYM_URL", "CHECKPOINT_DIR", "LOGGING_DIR", "HF_HOME"):
        assert env_var in text
    for key in TrainConfig.model_fields:
        assert f"  {key} [" in text, f"config key {key} missing from train --help"
    assert "--dry-run" in text and "--set KEY=VALUE" in text


def test_bad_config_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "tasks: [click-test]\nmax_stpes: 3\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid config" in err and "did you mean 'max_steps'" in err


def test_print_config_resolves_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_DIR", "/ckpt")
    path = write(tmp_path, "tasks: [click-test]\n")
    assert main(["train", "--config", str(path), "--set", "max_steps=3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 3 and printed["checkpoint_dir"] == "/ckpt"
    assert printed["tasks"] == [{"name": "click-test", "weight": 1.0}]


def test_the_config_table_in_the_docs_is_the_one_the_model_generates() -> None:
    from browser_control.training.config import config_table

    text = (REPO / "docs" / "training.md").read_text()
    begin = text.index("<!-- config-table:")
    begin = text.index("\n", begin) + 1
    end = text.index("<!-- end of config-table -->")
    assert text[begin:end] == config_table(TrainConfig), (
        "docs/training.md's config table is out of date: replace it with the output of "
        "`python -m browser_control.training.config`"
    )


def test_the_config_table_names_every_key_with_its_default() -> None:
    from browser_control.training.config import config_table

    rows = [line.split(" | ") for line in config_table(TrainConfig).splitlines()[2:]]
    assert [row[0].strip("|` ") for row in rows] == list(TrainConfig.model_fields)
    by_key = {row[0].strip("|` "): row[1] for row in rows}
    assert by_key["tasks"] == "required" and by_key["max_episode_steps"] == "10"
    assert by_key["use_vllm"] == "false" and by_key["eval_steps"] == "unset"
