"""One rank of the sharded-evaluation test (or the single process): builds the embedded
default's finetune model with a fixed seed, runs the runner's length pass on the training
data and exact_match on EVAL_JSON, and writes OUT_DIR/rank<R>.json with the metrics and
whether its length table came from the cache, and the batch sizes its generate calls had.

    [torchrun --nproc_per_node=2] shard_eval.py CACHE_DIR EVAL_JSON OUT_DIR
"""

import json
import logging
import os
import sys
from pathlib import Path


def main(cache: str, eval_path: str, out_dir: str) -> None:
    from transformers import set_seed

    from llava_hydra.data.cli import compose_spec
    from llava_hydra.data.synthetic import prepare
    from llava_hydra.eval.heldout import exact_match
    from llava_hydra.model import build_model
    from llava_hydra.data.spec import spec_dataset
    from llava_hydra.commands.runner import length_pass_once, training_arguments
    from llava_hydra.config.distributed import end_process_group
    from llava_hydra.data.tiny import pretrained_path

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("llava_hydra.data.dataset").addHandler(handler)
    logging.getLogger("llava_hydra.data.dataset").setLevel(logging.INFO)

    cfg = compose_spec(["stage=finetune", "stage.pretrain_mm_mlp_adapter=null", f"paths.cache_dir={cache}",
                        f"training.output_dir={out_dir}", "data.synthetic.num_images=16",
                        "data.synthetic.num_text_only=4", "data.synthetic.num_eval=7"])
    args = training_arguments(cfg)  # two processes on CPU: the gloo group, as a run makes it
    with args.main_process_first(local=False):  # as the runner's step 2
        prepare(cfg)
        for name in (cfg.model.llm, cfg.model.vision_tower):
            pretrained_path(name, cache)
    set_seed(0)
    model, tokenizer, image_processor = build_model(cfg)
    image_tokens = (model.config.image_seq_length, model.config.image_token_index)
    length_pass_once(spec_dataset(cfg, cfg.data.data_path, tokenizer, image_processor, *image_tokens), args)
    eval_set = spec_dataset(cfg, eval_path, tokenizer, image_processor, *image_tokens)
    generate, rows = model.generate, []

    def counting_generate(**kwargs):  # how many questions this rank answers
        rows.append(len(kwargs["input_ids"]))
        return generate(**kwargs)

    model.generate = counting_generate
    metrics = exact_match(model, eval_set, max_new_tokens=3, batch_size=2)
    metrics["generated_rows"] = rows
    rank = int(os.environ.get("RANK", "0"))
    metrics["length_messages"] = [m for m in messages if m.startswith("lengths of")]
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(metrics))
    end_process_group()
    # Leave without interpreter teardown: about one run in six, a rank of this script aborted after
    # its work was done ("terminate called without an active exception", no Python frame) even
    # with the process group destroyed; the metrics it wrote are what the test compares.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
