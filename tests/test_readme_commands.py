"""README's shell commands, run in the order README shows them, on a fresh directory (the embedded
default, from nothing), each asserted to end as README says it will.

Every command of every ```bash block of README.md must be listed in COMMANDS, either to run (with
the exit status README implies) or to skip with the reason written out: a command added to README
fails this test until it is classified here, and a listed command that README no longer shows fails
it too. Training commands get small step counts appended (SMALL: later overrides of the same run);
README's own-data paths (/data/mine) are replaced by a copy of the synthetic data (MINE), and the
Optuna sweep runs 2 trials instead of 12 (REWRITES). Slow: 104 s of CPU, 6.5 min wall on a
shared 2-core machine at load 9 (not measured alone): marked ``e2e``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.per_device_train_batch_size=4", "training.max_steps=2", "eval.max_samples=2"]
DETAILS = ("a full training run (minutes); tests/test_details_compare.py (slow) runs both of README's detail-task "
           "commands at a reduced budget and asserts the margin")
HUB_GPU = "needs the LLaVA-1.5 hub weights (vicuna, CLIP-L/336), LLaVA's data under ./playground and GPUs"

# command as README writes it (continuation lines joined, comments dropped) -> ("run", exit status,
# append SMALL) or ("skip", why)
COMMANDS = {
    "python3 -m venv .venv": ("skip", "the test runs in the installed environment (no network to install into a new one)"),
    ". .venv/bin/activate": ("skip", "the test runs in the installed environment"),
    "pip install torch==2.13.0": ("skip", "installing from PyPI needs the network"),
    "pip install -e .": ("skip", "installing needs the network; the package is installed editable already"),
    'pip install -e ".[test]"': ("skip", "installing needs the network; the test extra is installed already"),
    "python -m pytest -q": ("skip", "the whole suite, this test among it"),
    "python -m llava_hydra": ("run", 0, True),
    "python -m llava_hydra stage=finetune": ("run", 0, True),
    "python -m llava_hydra stage=pretrain model=vicuna13b": ("skip", HUB_GPU),
    "python -m llava_hydra stage=finetune model=vicuna13b": ("skip", HUB_GPU),
    # the default stage 1 ran above and finished: resuming it says so and exits 0
    "python -m llava_hydra training.resume_from_checkpoint=auto": ("run", 0, True),
    "python -m llava_hydra paths.output_root=outputs/try2": ("run", 0, True),
    "python -m llava_hydra training.overwrite_output_dir=true": ("run", 0, True),
    "python -m llava_hydra stage=finetune model=vicuna13b --cfg job": ("run", 0, False),
    "python -m llava_hydra --config-dir ~/llava_conf stage=finetune model=my_mistral data=my_charts":
        ("skip", "needs the user's own ~/llava_conf (model/my_mistral.yaml, data/my_charts.yaml) and /models/mistral"),
    "python -m llava_hydra stage=finetune model=vicuna7b model.llm=/models/vicuna-7b-v1.5 "
    "model.vision_tower=/models/clip-vit-large-patch14-336 paths.data_root=/data/llava":
        ("skip", "needs local copies of the hub weights under /models and LLaVA's data under /data/llava"),
    # README: "Stage 2 of the tiny default on your own data, after stage 1" (its own run directory)
    "python -m llava_hydra stage=finetune data.data_path=/data/mine/qa.json data.image_folder=/data/mine/images":
        ("run", 0, True),
    "python -m llava_hydra stage=pretrain model=vicuna13b launcher.nproc_per_node=8": ("skip", HUB_GPU + " (8)"),
    "python -m llava_hydra stage=finetune model=vicuna13b launcher.nproc_per_node=8": ("skip", HUB_GPU + " (8)"),
    "torchrun --nproc_per_node 8 -m llava_hydra stage=finetune model=vicuna13b": ("skip", HUB_GPU + " (8)"),
    "deepspeed --num_gpus 8 --module llava_hydra stage=finetune model=vicuna13b": ("skip", HUB_GPU + " (8)"),
    "python -m llava_hydra stage=finetune model=vicuna7b deepspeed=none fsdp=full launcher.nproc_per_node=8":
        ("skip", HUB_GPU + " (8); FSDP2 on the tiny default: tests/test_fsdp2.py"),
    "python -m llava_hydra stage=finetune model=vicuna7b deepspeed=none fsdp=full training.bf16=true "
    "fsdp.activation_checkpointing=true training.gradient_checkpointing=false launcher.nproc_per_node=8":
        ("skip", HUB_GPU + " (8); FSDP2 on the tiny default: tests/test_fsdp2.py"),
    "torchrun --nnodes N --nproc_per_node 8 --node_rank R --master_addr HOST --master_port 29500 -m llava_hydra "
    "stage=finetune model=vicuna13b paths.output_root=/shared/llava": ("skip", HUB_GPU + " (8 per node, N nodes)"),
    "torchrun --nnodes N --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id job1 -m llava_hydra "
    "stage=finetune model=vicuna13b paths.output_root=/shared/llava": ("skip", HUB_GPU + " (8 per node, N nodes)"),
    "python -m llava_hydra -m stage=finetune training.mm_projector_lr=1e-5,2e-5,5e-5": ("run", 0, True),
    "python -m llava_hydra -m stage=finetune model=vicuna13b hydra/launcher=slurm hydra.launcher.partition=gpu "
    "training.mm_projector_lr=1e-5,2e-5,5e-5": ("skip", "needs a SLURM cluster (sbatch) and " + HUB_GPU),
    "python -m llava_hydra -m hydra/launcher=slurm_local training.learning_rate=1e-3,2e-3": ("run", 0, True),
    "python -m llava_hydra stage=finetune hparams_search=projector_lr_optuna hydra.sweeper.n_trials=12": ("run", 0, True),
    "python -m llava_hydra stage=finetune model=vicuna13b lora=lora": ("skip", HUB_GPU),
    "python -m llava_hydra stage=finetune model=vicuna7b lora=qlora deepspeed=zero2":
        ("skip", HUB_GPU + "; 4-bit bitsandbytes kernels want a GPU"),
    "python -m llava_hydra.merge outputs/vicuna13b/finetune_lora outputs/vicuna13b/merged":
        ("skip", "needs the 13B LoRA run above (" + HUB_GPU + ")"),
    'python -m llava_hydra.chat outputs/vicuna13b/finetune --image cat.jpg --prompt "What is in the picture?"':
        ("skip", "needs the 13B stage 2 run and the user's cat.jpg"),
    "python -m llava_hydra.chat outputs/vicuna13b/finetune --image cat.jpg":
        ("skip", "interactive, and needs the 13B stage 2 run and cat.jpg"),
    "python -m llava_hydra.eval model_dir=outputs/vicuna13b/finetune benchmark=pope paths.eval_root=./playground/data/eval":
        ("skip", "needs the 13B stage 2 run and LLaVA's evaluation files (playground/data/eval)"),
    "python -m llava_hydra.eval -m model_dir=outputs/vicuna13b/finetune benchmark=pope,gqa,textvqa,sqa,mme,vqav2,mmbench":
        ("skip", "needs the 13B stage 2 run and LLaVA's evaluation files (playground/data/eval)"),
    "torchrun --nproc_per_node 8 -m llava_hydra.eval model_dir=... benchmark=gqa":
        ("skip", "model_dir=... is a placeholder; 8 GPUs"),
    "python -m llava_hydra.eval model_dir=... benchmark=own benchmark.question_file=held_out.json "
    "benchmark.image_folder=imgs": ("skip", "model_dir=... is a placeholder; the user's held_out.json and imgs/"),
    "python -m llava_hydra.data.check stage=finetune model=vicuna7b paths.data_root=/data/llava":
        ("skip", "needs LLaVA's data under /data/llava and the vicuna tokenizer from the hub"),
    "python -m llava_hydra.data.check stage=finetune model=vicuna7b paths.data_root=/data/llava --images --json check.json":
        ("skip", "needs LLaVA's data under /data/llava and the vicuna tokenizer from the hub"),
    "python -m llava_hydra.data.preview --index 3 stage=finetune": ("run", 0, True),
    "python -m llava_hydra model=tiny_next": ("run", 0, True),
    "python -m llava_hydra model=tiny_next stage=finetune": ("run", 0, True),
    "python -m llava_hydra experiment=tiny_details model=tiny": ("skip", DETAILS),
    "python -m llava_hydra experiment=tiny_details model=tiny_next": ("skip", DETAILS),
    # model=tiny_onevision: both stages (and the stock client) run by tests/test_onevision_e2e.py (slow), kept out
    # of this default-suite test's time; the OneVision / LLaVA-NeXT presets name hub weights
    "python -m llava_hydra model=tiny_onevision": ("skip", "run by tests/test_onevision_e2e.py (pytest -m slow)"),
    "python -m llava_hydra model=tiny_onevision stage=finetune": ("skip", "run by tests/test_onevision_e2e.py (pytest -m slow)"),
    "python -m llava_hydra experiment=onevision_7b_pretrain": ("skip", "needs Qwen2-7B-Instruct, SigLIP-so400m and GPUs"),
    "python -m llava_hydra experiment=onevision_7b_si": ("skip", "needs Qwen2-7B-Instruct, SigLIP-so400m and GPUs"),
    "python -m llava_hydra experiment=onevision_7b_ov": ("skip", "needs finetune_si's model and GPUs"),
    "python -m llava_hydra experiment=onevision_7b_si model=onevision_qwen2_0_5b":
        ("skip", "needs Qwen2-0.5B-Instruct, SigLIP-so400m and LLaVA-NeXT's data"),
    "python -m llava_hydra model=llava_next_vicuna13b stage=finetune": ("skip", HUB_GPU),
    "python -m llava_hydra experiment=llava_next_qwen2_7b_pretrain": ("skip", HUB_GPU),
    "python -m llava_hydra experiment=llava_next_qwen2_7b_finetune": ("skip", HUB_GPU),
    'pip install lmms-eval==0.7.3 decord "filelock<3.20"': ("skip", "a separate environment (lmms-eval pulls its own torch); "
                                                           "run by hand, README says how"),
    "python -m lmms_eval eval --model llava_hf --model_args pretrained=outputs/tiny/finetune,device_map=cpu,dtype=float32 "
    "--tasks own_shapes --include_path my_tasks/ --device cpu --batch_size 1 --log_samples --output_path lmms_out/":
        ("skip", "needs lmms-eval's own environment (above) and the user's task folder my_tasks/"),
    "python -m llava_hydra.eval model_dir=outputs/tiny/finetune benchmark=own benchmark.question_file=held_out.json "
    "benchmark.image_folder=imgs": ("skip", "the user's held_out.json and imgs/"),  # SMALL: the data made above
    "python -m llava_hydra.data.shards data.json --image-folder images/ --out shards/ --samples-per-shard 1000":
        ("skip", "the user's data.json and images/; tests/test_shards.py converts generated data with the same code"),
    "python -m llava_hydra stage=finetune data.stream.shards=shards/":
        ("skip", "needs the shards converted above; tests/test_shards_slow.py trains from shards (2 processes)"),
    'pip install -e ".[stream]"': ("skip", "installing needs the network"),
    "python -m llava_hydra stage=finetune data.stream.shards=s3://bucket/llava/shards "
    "'data.stream.storage_options={client_kwargs: {endpoint_url: \"http://minio:9000\"}}'":
        ("skip", "needs an S3-compatible server holding the shards; tests/test_shards_slow.py uses moto's on localhost"),
}
REWRITES = {"hydra.sweeper.n_trials=12": "hydra.sweeper.n_trials=2"}  # 2 trials prove the sweep runs


def readme_commands(text: str) -> list[str]:
    """Every command of README's ```bash blocks, in order: continuation lines joined, comments
    dropped, ``a && b`` chains split."""
    out = []
    for _, block in re.findall(r"^( *)```bash\n(.*?)^\1```", text, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            out += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    return out


def test_every_readme_command_is_classified():
    commands = readme_commands(README.read_text())
    assert [c for c in commands if c not in COMMANDS] == [], "classify README's new commands in COMMANDS"
    assert [c for c in COMMANDS if c not in commands] == [], "README no longer shows these: drop them"


@pytest.mark.e2e
def test_readme_commands_in_order_on_a_fresh_directory(tmp_path):
    ran, skipped, timings = [], [], []
    for command in readme_commands(README.read_text()):
        how = COMMANDS[command]
        if how[0] == "skip":
            skipped.append((command, how[1]))
            continue
        _, status, small = how
        if "/data/mine" in command and not (tmp_path / "mine").exists():  # the user's own data: a copy of ours
            synthetic = tmp_path / "outputs" / ".cache" / "synthetic"
            (tmp_path / "mine").mkdir()
            shutil.copy(synthetic / "qa.json", tmp_path / "mine" / "qa.json")
            shutil.copytree(synthetic / "images", tmp_path / "mine" / "images")
        text = command.replace("/data/mine", str(tmp_path / "mine"))
        for a, b in REWRITES.items():
            text = text.replace(a, b)
        args = shlex.split(text)
        args = [sys.executable if a == "python" else a for a in args] + (SMALL if small else [])
        started = time.perf_counter()
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        timings.append((command, round(time.perf_counter() - started, 1)))
        assert done.returncode == status, f"{command}\n-> {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, command
        ran.append(command)
    print("\nran:", *(f"  {t:6.1f} s  {c}" for c, t in timings), sep="\n")
    print("skipped:", *(f"  {c}\n      ({why})" for c, why in skipped), sep="\n")
    out = tmp_path / "outputs"
    # each run that trained something different has its own directory; none collided
    for run_dir in ("tiny/pretrain", "tiny/finetune", "tiny/finetune_qa", "try2/tiny/pretrain", "tiny_next/pretrain",
                    "tiny_next/finetune"):
        assert (out / run_dir / "metrics.json").is_file(), run_dir
        assert (out / run_dir / ".hydra" / "config.yaml").is_file(), run_dir
    assert len(ran) == 13 and all(why for _, why in skipped)
