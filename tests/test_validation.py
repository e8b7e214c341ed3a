"""The spec's pre-flight (llava_hydra.config.validate): a typo in a choice, a bad number, an unknown
``+training`` key or a missing local model path is refused by key name, with the valid values and
a "did you mean", in well under 2 s and without importing torch; every shipped spec passes.
Also ``--help``: this project's page, listing the groups a user types and five working examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llava_hydra.config.validate import SpecError, did_you_mean, group_option_problems, validate

CONF = Path(__file__).parents[1] / "conf"

# overrides -> the exact line the error holds for it
REFUSED = {
    "data.template=v2": "data.template='v2': not one of plain, v1, llama_2, mpt, qwen_1_5, chat_template (did you mean 'v1'?)",
    "data.on_bad_sample=skp": "data.on_bad_sample='skp': not one of raise, skip (did you mean 'skip'?)",
    "data.image_aspect_ratio=padd": "data.image_aspect_ratio='padd': not one of square, pad, anyres, anyres_max_9 (did you mean 'pad'?)",
    "model.mm_projector_type=mlp2x_gleu":
        "model.mm_projector_type='mlp2x_gleu': not one of mlp2x_gelu, linear (did you mean 'mlp2x_gelu'?)",
    "model.mm_vision_select_feature=cls":
        "model.mm_vision_select_feature='cls': not one of patch, cls_patch (did you mean 'cls_patch'?)",
    "model.dtype=bf16": "model.dtype='bf16': not one of auto, float32, bfloat16, float16 (did you mean 'bfloat16'?)",
    "training.length_grouping=sorted_step": "training.length_grouping='sorted_step': not one of random_steps, "
                                            "llava, sorted_steps (did you mean 'sorted_steps'?)",
    "stage.trainable=[mm_projector,llms]":
        "stage.trainable item 'llms': not one of mm_projector, llm, vision_tower (did you mean 'llm'?)",
    "lora.bias=al": "lora.bias='al': not one of none, all, lora_only (did you mean 'all'?)",
    "lora.bits=3": "lora.bits=3: not one of 16, 8, 4",
    "deepspeed=zero3 deepspeed.zero_optimization.stage=4": "deepspeed.zero_optimization.stage=4: not one of 0, 1, 2, 3",
    "+training.learnig_rate=1e-3":
        "training.learnig_rate: not a field of transformers' TrainingArguments (did you mean 'learning_rate'?)",
    "training.per_device_train_batch_size=0": "training.per_device_train_batch_size=0: must be >= 1",
    "training.learning_rate=-1": "training.learning_rate=-1.0: must be > 0",
    "model.model_max_length=0": "model.model_max_length=0: must be >= 1",
    "training.gradient_accumulation_steps=0": "training.gradient_accumulation_steps=0: must be >= 1",
    "training.warmup_ratio=-0.1": "training.warmup_ratio=-0.1: must be in [0, 1)",
    "training.num_train_epochs=0 training.max_steps=-1": "training.num_train_epochs=0.0 (with training.max_steps=-1) "
        "trains nothing: set training.num_train_epochs > 0 or training.max_steps > 0",
    "model.llm=/typo/path": "no such local directory: /typo/path (model.llm)",
    "model.vision_tower=./no-such-tower": "no such local directory: ./no-such-tower (model.vision_tower)",
    "stage.pretrain_mm_mlp_adapter=/no/such/mm_projector.bin":
        "no such local file: /no/such/mm_projector.bin (stage.pretrain_mm_mlp_adapter)",
}
# names read from transformers' source: the list is transformers' own, the suggestion is ours
REFUSED_BY_TRANSFORMERS_NAMES = {
    "training.lr_scheduler_type=cosin": ("training.lr_scheduler_type='cosin': not one of linear, cosine, ",
                                         "(did you mean 'cosine'?)"),
    "training.optim=adamw": ("training.optim='adamw': not one of adamw_torch, ", "(did you mean 'adamw_torch'?)"),
    "training.save_strategy=step": ("training.save_strategy='step': not one of no, steps, epoch",
                                    "(did you mean 'steps'?)"),
    "training.report_to=[wandbb]": ("training.report_to item 'wandbb': not one of ", "(did you mean 'wandb'?)"),
}

# Composes every case and validates it in a fresh interpreter: each check's time, its message, and
# whether torch (or transformers) was imported along the way.
PROBE = r"""
import json, sys, time
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from llava_hydra.config.schema import register_configs
from llava_hydra.config.validate import SpecError, validate
register_configs()
out = {}
for case in json.loads(sys.argv[1]):
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("config", overrides=case.split())
    started = time.perf_counter()
    try:
        validate(cfg)
        message = None
    except SpecError as e:
        message = str(e)
    out[case] = (message, time.perf_counter() - started)
print(json.dumps({"cases": out, "heavy": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def probed():
    cases = [*REFUSED, *REFUSED_BY_TRANSFORMERS_NAMES, "training.learning_rate=1e-4 +training.label_smoothing_factor=0.1"]
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_typos_are_refused_without_importing_torch_or_transformers(probed):
    assert probed["heavy"] == []


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_by_key_with_valid_values_and_a_suggestion(probed, case):
    message, seconds = probed["cases"][case]
    assert message == f"the run spec has 1 problem:\n  {REFUSED[case]}" or (
        case.startswith("stage.pretrain") and message.startswith(f"the run spec has 1 problem:\n  {REFUSED[case]}\n"))
    assert seconds < 2


@pytest.mark.parametrize("case", list(REFUSED_BY_TRANSFORMERS_NAMES))
def test_transformers_own_names_are_the_choices(probed, case):
    message, seconds = probed["cases"][case]
    start, end = REFUSED_BY_TRANSFORMERS_NAMES[case]
    line = message.splitlines()[1].strip()
    assert line.startswith(start) and line.endswith(end), line
    assert seconds < 2


def test_a_valid_extra_training_argument_passes(probed):
    assert probed["cases"]["training.learning_rate=1e-4 +training.label_smoothing_factor=0.1"][0] is None


def test_all_problems_are_listed_at_once(compose_spec):
    cfg = compose_spec("training.per_device_train_batch_size=0", "training.learning_rate=-1",
                       "model.model_max_length=0", "data.template=v2")
    with pytest.raises(SpecError) as e:
        validate(cfg)
    assert str(e.value) == (
        "the run spec has 4 problems:\n"
        "  data.template='v2': not one of plain, v1, llama_2, mpt, qwen_1_5, chat_template (did you mean 'v1'?)\n"
        "  model.model_max_length=0: must be >= 1\n"
        "  training.learning_rate=-1.0: must be > 0\n"
        "  training.per_device_train_batch_size=0: must be >= 1")


def test_missing_stage1_projector_says_which_command_writes_it(compose_spec, tmp_path):
    cfg = compose_spec("stage=finetune", "model=vicuna7b", f"paths.output_root={tmp_path}")
    with pytest.raises(SpecError) as e:
        validate(cfg)
    assert str(e.value).splitlines()[1:4] == [  # (then the missing data file and folder: tests/test_first_hour.py)
        f"  no such local file: {tmp_path}/vicuna7b/pretrain/mm_projector.safetensors (stage.pretrain_mm_mlp_adapter)",
        f"    stage 1 writes it: python -m llava_hydra stage=pretrain model=vicuna7b paths.output_root={tmp_path}",
        "    (or stage.pretrain_mm_mlp_adapter=null to start from a new projector)"]


def test_model_ids_builtins_and_existing_paths_pass(compose_spec, tmp_path, monkeypatch):
    validate(compose_spec())  # the default: builtin://tiny-llama, builtin://tiny-clip
    (tmp_path / "LLaVA-Pretrain" / "images").mkdir(parents=True)  # the recipe's data, which must exist
    (tmp_path / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json").write_text("[]")
    validate(compose_spec("model=vicuna13b", "lora=lora", f"paths.data_root={tmp_path}"))  # hub ids
    validate(compose_spec(f"model.llm={tmp_path}", "model.vision_tower=openai/clip-vit-large-patch14-336",
                          "model.attn_implementation=kernels-community/flash-attn"))  # a hub kernel passes unchecked
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ is tmp_path; Hydra wants a ~ quoted
    with pytest.raises(SpecError) as e:
        validate(compose_spec("model.llm='~/no-such-model-dir'"))
    assert str(e.value).splitlines()[1] == "  no such local directory: ~/no-such-model-dir (model.llm)"
    (tmp_path / "llm").mkdir()  # it exists, but transformers would take "~/llm" for a hub id
    with pytest.raises(SpecError) as e:
        validate(compose_spec("model.llm='~/llm'"))
    assert str(e.value).splitlines()[1] == f"  model.llm=~/llm: write the path without ~ ({tmp_path}/llm); it is not expanded"


@pytest.mark.parametrize("group", ["stage", "model", "data", "deepspeed", "lora", "experiment"])
def test_every_shipped_option_passes(compose_spec, group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        for stage in ("pretrain", "finetune") if group != "experiment" else (None,):  # a preset names its stage
            overrides = [f"stage={stage}"] * (stage is not None) + [f"{group}={option}"]
            validate(compose_spec(*overrides), local_paths=False)  # raises on a false alarm


def test_choices_equal_the_tables_the_code_branches_on():
    from llava_hydra.sampling import sampler
    from llava_hydra.data.image_tokens import SELECT_FEATURES
    from llava_hydra.model.llava import PROJECTOR_ACT
    from llava_hydra.model.precision import DTYPES
    from llava_hydra.config.schema import CHOICES, TEMPLATES
    from llava_hydra.data import conversation

    assert set(TEMPLATES) == set(conversation.TEMPLATES)
    assert set(CHOICES["model.mm_projector_type"]) == set(PROJECTOR_ACT)
    assert set(CHOICES["model.mm_vision_select_feature"]) == set(SELECT_FEATURES)
    assert set(CHOICES["model.dtype"]) == {"auto", *DTYPES}
    assert set(CHOICES["training.length_grouping"]) == set(sampler.MODES)
    from llava_hydra.data import synthetic

    assert set(CHOICES["data.synthetic.task"]) == set(synthetic.TASKS) == {"shapes", "details"}


def test_did_you_mean():
    assert did_you_mean("cosin", ["linear", "cosine"]) == " (did you mean 'cosine'?)"
    assert did_you_mean("learnig_rate", ["learning_rate", "lr"]) == " (did you mean 'learning_rate'?)"
    assert did_you_mean("zzz", ["raise", "skip"]) == ""


def test_a_bad_value_stops_the_command_in_one_clear_line():
    code = ("import sys, runpy; sys.argv=['llava_hydra','data.on_bad_sample=skp'];"
            "\ntry: runpy.run_module('llava_hydra', run_name='__main__')"
            "\nexcept SystemExit as e: print(e.code)"  # a string: printed to stderr, exit status 1
            "\nprint('heavy', [m for m in ('torch', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == ("error: the run spec has 1 problem:\n"
                           "  data.on_bad_sample='skp': not one of raise, skip (did you mean 'skip'?)\n"
                           "heavy []\n"), done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_group_option_gets_a_suggestion():
    assert group_option_problems(["model=vicuna14b", "stage=finetune", "training.learning_rate=1e-4"]) == [
        "model=vicuna14b: no such option; the options are llama2_7b_chat, llama3_8b_instruct, llava_next_qwen2_7b, "
        "llava_next_vicuna13b, "
        "llava_next_vicuna7b, onevision_qwen2_0_5b, onevision_qwen2_7b, qwen2_7b_instruct, tiny, tiny_next, "
        "tiny_onevision, vicuna13b, vicuna7b, vicuna7b_v1_linear (did you mean 'vicuna13b'?)"]
    assert group_option_problems(["lora=lora,qlor"]) == [  # each value of a sweep
        "lora=qlor: no such option; the options are lora, none, qlora (did you mean 'qlora'?)"]
    assert group_option_problems(["+experiment=llava15_7b_pretrain", "deepspeed=zero3", "lora=null"]) == []
    assert group_option_problems(["--config-dir", "/mine", "model=my_mistral"]) == []  # options we cannot see


def test_unknown_group_option_stops_the_command_before_hydra_composes():
    done = subprocess.run([sys.executable, "-m", "llava_hydra", "deepspeed=zero4"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == ("error: deepspeed=zero4: no such option; the options are none, zero2, zero3, "
                           "zero3_offload (did you mean 'zero3'?)\n")


# -- --help ------------------------------------------------------------------------------------

TYPED_GROUPS = ["stage", "model", "data", "deepspeed", "fsdp", "lora", "experiment", "hparams_search", "hydra/launcher"]


@pytest.fixture(scope="module")
def help_page():
    return subprocess.run([sys.executable, "-m", "llava_hydra", "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_help_is_ours_and_lists_every_option_of_the_groups_a_user_types(help_page):
    assert "powered by Hydra" not in help_page and help_page.startswith("llava_hydra:")
    groups = dict(re.findall(r"^  (\S+)\s{2,}(.*(?:\n {18}.*)*)", help_page.split("== Examples")[0], re.M))
    assert list(groups) == TYPED_GROUPS  # not the internal recipe/ and benchmark/
    for group in TYPED_GROUPS:
        listed = set(re.findall(r"[\w/]+", groups[group]))
        options = {p.stem for p in (CONF / group).glob("*.yaml")}
        assert options and options <= listed, (group, options - listed)


def test_help_examples_are_five_commands_that_compose_and_validate(help_page, compose_spec):
    section = help_page.split("== Examples ==")[1].split("==")[0].replace("\\\n", " ")
    commands = [line.split("#")[0].split() for line in section.splitlines() if "python -m llava_hydra" in line]
    assert len(commands) == 5
    for words in commands:
        overrides = [w.split(",")[0] for w in words[3:] if w != "-m"]  # a sweep: its first job
        validate(compose_spec(*overrides), local_paths=False)


@pytest.mark.parametrize("command", ["check", "preview"])
def test_data_commands_refuse_a_bad_choice_by_key(command, capsys):
    """data.check / data.preview compose the spec as a run does and refuse the same typos."""
    import importlib

    main = importlib.import_module(f"llava_hydra.data.{command}").main
    assert main(["data.on_bad_sample=skpi"]) == 2
    err = capsys.readouterr().err
    assert "data.on_bad_sample='skpi': not one of" in err and "did you mean 'skip'?" in err
