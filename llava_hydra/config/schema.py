"""The run spec's schema: dataclasses registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` is merged onto these dataclasses, so a misspelled key
(``training.learnig_rate=...``) or a wrong type is rejected by Hydra before the task
function runs, with a message that names the key. This module imports nothing heavy:
``--cfg job`` must answer without torch or transformers.

``training`` holds Hugging Face ``TrainingArguments`` fields by their own names plus the
LLaVA-specific ones; a TrainingArguments field not listed here can still be passed with
Hydra's append syntax (``+training.max_grad_norm=0.5``) and is handed through verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from llava_hydra.config.fsdp import CHOICES as FSDP_CHOICES, RANGES as FSDP_RANGES, FsdpConfig
from llava_hydra.config.stream import RANGES as STREAM_RANGES, StreamConfig


@dataclass
class StageConfig:
    name: str = MISSING  # pretrain | finetune
    trainable: List[str] = field(default_factory=lambda: ["mm_projector"])  # of: mm_projector, llm, vision_tower
    pretrain_mm_mlp_adapter: Optional[str] = None  # projector weights to start from


@dataclass
class ModelConfig:
    name: str = MISSING
    llm: str = MISSING  # hub id, local path, or builtin://tiny-llama
    vision_tower: str = MISSING  # hub id, local path, or builtin://tiny-clip
    # an already-assembled Hugging Face LLaVA checkpoint (hub id or local path) to start from
    # instead of assembling llm + vision_tower (LLaVA-1.5's finetune_task recipes)
    pretrained_llava: Optional[str] = None
    # the conversation template of this LLM's chats: instruction data (data/*_finetune.yaml) renders
    # with it (data.template: ${model.template}). No default: a new model file must say it.
    template: str = MISSING  # v1 | llama_2 | mpt | qwen_1_5 | chat_template
    # the LLaVA-1.5 released on this LLM, in transformers' format; experiment=llava15_*_finetune_task
    # starts from it. No default: a task preset on a model without one is an error naming this key.
    released_llava: Optional[str] = MISSING
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"  # patch | cls_patch
    model_max_length: int = 2048
    attn_implementation: str = "auto"  # auto | sdpa | eager | flash_attention_2
    dtype: str = "auto"  # auto (bf16 if training.bf16, else fp32) | float32 | bfloat16 | float16
    trust_remote_code: bool = False
    # llava (LLaVA-1.5) | llava_next | llava_onevision (AnyRes; README "Model families", config/families.py)
    family: str = "llava"
    # AnyRes grids, [[height, width], ...] px (multiples of the tower's input size) or LLaVA-NeXT's
    # "(1x1),...,(6x6)"; null: the family's own (llava_next: 1x2 2x1 2x2 3x1 1x3 crops; onevision: 1x1..6x6)
    image_grid_pinpoints: Optional[Any] = None
    mm_patch_merge_type: Optional[str] = None  # flat | spatial_unpad; null: spatial_unpad under an anyres aspect


@dataclass
class SyntheticSpec:
    """Parameters of the generated shapes dataset (only for data=synthetic_*)."""

    num_images: int = 1600
    num_text_only: int = 240
    num_eval: int = 200
    seed: int = 0
    task: str = "shapes"  # shapes (data/synthetic.py) | details: the high-resolution task (data/details.py)


@dataclass
class SourceConfig:
    """One source of a mixture (data.sources; llava_hydra.data.mixture)."""

    data_path: str = MISSING  # LLaVA-format JSON / JSONL (a mixture .yaml may call it json_path, as LLaVA-NeXT)
    name: Optional[str] = None  # in logs and trackers (loss/<name>); default: the file's name without suffix
    image_folder: Optional[str] = None  # default: data.image_folder
    video_folder: Optional[str] = None  # default: data.video_folder (video records: llava_onevision, data/video.py)
    sampling_strategy: str = "all"  # all | first:N% | end:N% | random:N% | first:N | end:N | random:N
    repeat: float = 1  # the selection this many times per epoch (a fraction: a random part of it)


@dataclass
class DataConfig:
    name: str = MISSING
    # LLaVA-format JSON list, or a mixture .yaml (LLaVA-NeXT's datasets: list); null when data.sources is set
    data_path: Optional[str] = MISSING
    sources: Optional[List[SourceConfig]] = None  # a mixture given inline (llava_hydra.data.mixture)
    preset_path: Optional[str] = None  # the data_path its data file names; another data_path names the run dir
    image_folder: Optional[str] = None  # image paths in the JSON are relative to this
    template: str = MISSING  # plain | v1 | llama_2 | mpt | qwen_1_5 | chat_template
    image_aspect_ratio: str = "square"  # square | pad | anyres (model.family=llava_next) | anyres_max_9 (onevision)
    eval_data_path: Optional[str] = None  # held-out questions for exact-match eval
    on_bad_sample: str = "raise"  # raise (stop, naming file/sample/problem) | skip (log each once, count at the end)
    synthetic: Optional[SyntheticSpec] = None  # set: generate data_path if it is missing
    allow_images_outside_folder: bool = False  # image paths written to leave image_folder (../, absolute; symlinks in it are fine)
    max_image_pixels: Optional[int] = 50_000_000  # larger images refused before decoding; null: PIL's own limit
    # videos (model.family=llava_onevision; data/video.py, data/video_tokens.py), LLaVA-NeXT's DataArguments:
    video_folder: Optional[str] = None  # a record's "video" path is relative to this
    frames_upbound: int = 0  # at most this many frames, uniformly spread (0: no cap); OneVision's recipes: 32
    force_sample: bool = False  # always frames_upbound frames (a constant count: batches / packing of videos)
    video_fps: int = 1  # frames read per second of video before the upbound
    stream: StreamConfig = field(default_factory=StreamConfig)  # shards streamed (llava_hydra.config.stream)


@dataclass
class LoraConfig:
    enable: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    bias: str = "none"
    bits: int = 16  # 16 | 8 | 4
    quant_type: str = "nf4"
    double_quant: bool = True


@dataclass
class TrainingConfig:
    output_dir: str = MISSING
    # LLaVA-specific
    mm_projector_lr: Optional[float] = None
    vision_tower_lr: Optional[float] = None
    group_by_modality_length: bool = False
    # with group_by_modality_length: random_steps (each step a random draw as LLaVA's, sorted only inside
    # the step) | llava (LLaVA's exact order) | sorted_steps (opt-in: whole-dataset length sort, steps of
    # one length -- changes what each step averages, not LLaVA's objective)
    length_grouping: str = "random_steps"
    length_grouping_pool: Optional[int] = None  # sorted_steps only: sort within pools of this many steps
    # several samples per sequence of model.model_max_length, each attending to itself; every step a random
    # draw of samples packed into its rows (re-drawn every epoch), rows balanced across ranks by real tokens;
    # batch size then counts rows
    packing: bool = False
    packing_fill: float = 0.86  # packing: target share of real tokens in a row (rows = tokens / fill / length)
    # Hugging Face TrainingArguments, by their own names
    learning_rate: float = 2e-5
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.03  # fraction of steps; handed to transformers 5 as warmup_steps
    warmup_steps: int = 0
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    bf16: bool = False
    fp16: bool = False
    tf32: Optional[bool] = None
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    logging_steps: float = 1
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: Optional[int] = 1
    save_on_each_node: bool = False  # run dir on node-local disks: each node writes its own copy (README "Several nodes")
    eval_strategy: str = "no"
    report_to: List[str] = field(default_factory=lambda: ["none"])
    run_name: Optional[str] = None
    seed: int = 42
    data_seed: Optional[int] = None
    use_cpu: bool = False
    disable_tqdm: Optional[bool] = None
    remove_unused_columns: bool = False
    resume_from_checkpoint: Optional[str] = None  # a checkpoint path, or auto: the latest intact one in output_dir
    # a new run in an output_dir holding another run's checkpoints/outputs deletes them (else: refused)
    overwrite_output_dir: bool = False
    # resume a checkpoint written under a spec that differs in model/data/optimizer keys (else: refused)
    resume_allow_spec_change: bool = False
    # what protects a run (llava_hydra.train.preemption, .guards; README "What protects a run"):
    # also save a checkpoint once this many minutes passed since the last one, whatever save_steps says (null: off)
    save_every_minutes: Optional[float] = None
    # these signals make the run save a checkpoint at the next optimizer step and exit 128+signal
    # (SIGTERM: scancel/preemption/kill; SIGUSR1: sbatch --signal=USR1@120; SIGUSR2: submitit's); [] = off
    checkpoint_on_signals: List[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGUSR2"])
    on_nonfinite: str = "stop"  # NaN/inf loss or gradient norm: stop (error naming the step) | skip (drop the step, counted)


@dataclass
class EvalConfig:
    enable: bool = True
    max_new_tokens: int = 8
    max_samples: Optional[int] = None
    steps: Optional[int] = None  # also score data.eval_data_path every N steps during training (logged)
    keep_best: bool = False  # with steps: the best-scoring checkpoint survives save_total_limit


@dataclass
class LauncherConfig:
    """One command on one node: nproc_per_node > 1 makes the runner start that many workers
    itself (torchrun) with the spec composed once; under torchrun/deepspeed it is ignored."""

    nproc_per_node: int = 1
    master_port: Optional[int] = None  # default: a free port


@dataclass
class PathsConfig:
    output_root: str = "outputs"  # run directories: <output_root>/<model>/<stage>
    data_root: str = "./playground/data"  # where LLaVA's released data lives
    cache_dir: str = "outputs/.cache"  # generated tiny models, synthetic data, length caches


@dataclass
class TrackingConfig:
    """Where training.report_to's trackers file the run (llava_hydra.commands.tracking)."""

    # wandb project, MLflow experiment. The run's name is training.run_name, or else model/stage plus
    # a sweep job's swept overrides; a sweep's jobs are grouped under the sweep directory's name.
    project: str = "llava_hydra"


@dataclass
class LlavaHydraConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: Optional[Dict[str, Any]] = None  # the DeepSpeed JSON as a node
    fsdp: Optional[FsdpConfig] = None  # PyTorch FSDP2 instead of DeepSpeed (config/fsdp.py)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_dir: str = MISSING


# -- the values a key accepts (checked by llava_hydra.config.validate before anything heavy is imported) ---
# Each is the list of strings the code branches on: keep it equal to the code's own table (named beside
# it; tests/test_validation.py compares them). A key in a list node (stage.trainable) checks every item.
# training.lr_scheduler_type / optim / save_strategy / eval_strategy / report_to are checked against
# transformers' own names, read from its source (llava_hydra.config.hf_source).
TEMPLATES = ("plain", "v1", "llama_2", "mpt", "qwen_1_5", "chat_template")  # data.conversation.TEMPLATES
CHOICES: Dict[str, tuple] = {
    "stage.trainable": ("mm_projector", "llm", "vision_tower"),  # model.llava.PARTS
    "model.template": TEMPLATES,
    "model.mm_projector_type": ("mlp2x_gelu", "linear"),  # model.PROJECTOR_ACT
    "model.mm_vision_select_feature": ("patch", "cls_patch"),  # data.image_tokens.SELECT_FEATURES (read from here)
    # transformers' attention functions; a hub kernel ("org/kernel") or "paged|..." passes unchecked
    "model.attn_implementation": ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                  "flash_attention_4", "flex_attention"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),  # model.DTYPES
    "data.template": TEMPLATES,
    "data.image_aspect_ratio": ("square", "pad", "anyres", "anyres_max_9"),  # data.pixels + config.families
    "model.family": ("llava", "llava_next", "llava_onevision"),  # config.families.FAMILIES
    "model.mm_patch_merge_type": ("flat", "spatial_unpad"),  # config.families.MERGE_TYPES
    "data.on_bad_sample": ("raise", "skip"),
    "data.synthetic.task": ("shapes", "details"),  # data.synthetic.TASKS
    "lora.bias": ("none", "all", "lora_only"),  # peft's
    "lora.bits": (16, 8, 4),
    "lora.quant_type": ("nf4", "fp4"),  # bitsandbytes'
    "training.length_grouping": ("random_steps", "llava", "sorted_steps"),  # sampler.MODES (read from here)
    "training.on_nonfinite": ("stop", "skip"),  # train.guards
    "training.checkpoint_on_signals": ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP", "SIGQUIT", "SIGXCPU"),
    "deepspeed.zero_optimization.stage": (0, 1, 2, 3),
    "deepspeed.zero_optimization.offload_optimizer.device": ("none", "cpu", "nvme"),
    "deepspeed.zero_optimization.offload_param.device": ("none", "cpu", "nvme"),
}

# Numbers: "> x", ">= x" or an interval "[a, b)", "(a, b]" ... A null (where the key allows one) is not checked.
RANGES: Dict[str, str] = {
    "model.model_max_length": ">= 1",
    "training.learning_rate": "> 0",
    "training.mm_projector_lr": "> 0",
    "training.vision_tower_lr": "> 0",
    "training.per_device_train_batch_size": ">= 1",
    "training.per_device_eval_batch_size": ">= 1",
    "training.gradient_accumulation_steps": ">= 1",
    "training.warmup_ratio": "[0, 1)",
    "training.packing_fill": "(0, 1]",  # packing_rows: rows = tokens / (fill x length); above 1 they cannot hold them
    "training.warmup_steps": ">= 0",
    "training.weight_decay": ">= 0",
    "training.adam_beta1": "[0, 1)",
    "training.adam_beta2": "[0, 1)",
    "training.max_grad_norm": ">= 0",
    "training.dataloader_num_workers": ">= 0",
    "training.logging_steps": "> 0",
    "training.save_steps": "> 0",
    "training.length_grouping_pool": ">= 1",
    "training.save_every_minutes": "> 0",
    "lora.r": ">= 1",
    "lora.alpha": "> 0",
    "lora.dropout": "[0, 1)",
    "eval.max_new_tokens": ">= 1",
    "eval.max_samples": ">= 1",
    "eval.steps": ">= 1",
    "launcher.nproc_per_node": ">= 1",
    **STREAM_RANGES,
}
CHOICES.update(FSDP_CHOICES), RANGES.update(FSDP_RANGES)  # the fsdp node's (config/fsdp.py)

# Keys that name a model or weights file: hub id, builtin://NAME, or a local path that must exist.
LOCAL_PATH_KEYS = ("model.llm", "model.vision_tower", "model.pretrained_llava", "stage.pretrain_mm_mlp_adapter")

def check_resolves(cfg) -> None:
    """Resolve every interpolation of the composed spec now, before anything heavy is loaded, so a
    value that points at a missing one (a _task preset on a model with no ``released_llava``) is
    an error naming both keys instead of a failure halfway into a run."""
    from omegaconf import OmegaConf

    OmegaConf.missing_keys(cfg)  # raises InterpolationToMissingValueError naming both keys


def register_configs() -> None:
    from llava_hydra.config.run_dir import register_resolvers

    register_resolvers()  # the default run directory's suffixes (llava_hydra.config.run_dir)
    cs = ConfigStore.instance()
    cs.store(name="llava_hydra_schema", node=LlavaHydraConfig)
    try:  # the submitit plugin's schemas, under names our conf/hydra/launcher/*.yaml extend
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    except ImportError:
        return
    cs.store(group="hydra/launcher", name="submitit_slurm_schema", node=SlurmQueueConf(), provider="llava_hydra")
    cs.store(group="hydra/launcher", name="submitit_local_schema", node=LocalQueueConf(), provider="llava_hydra")
