"""Merge a LoRA run's adapter into its base model and write a Hugging Face-native LLaVA.

    python -m llava_hydra.merge <run_dir or run_dir/checkpoint-N> <out_dir>

The base model is rebuilt from the run's own spec (``llava_hydra_spec.yaml``, written at the
start of every LoRA run) at 16 bits, even after QLoRA (merging into 4-bit weights would round
the update away); the adapter and the parts trained whole (projector, ...) come from
``adapter_model.safetensors`` of the directory given, so any checkpoint merges, not only the
last. ``out_dir`` then loads with ``LlavaForConditionalGeneration.from_pretrained`` and
``AutoProcessor.from_pretrained``; it also keeps the run's spec, so chat and eval of the merged folder
read images and videos by the run's own data settings (aspect ratio, frames), as they do on the run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def merge(adapter_dir: str | Path, out_dir: str | Path, dtype: str | None = None) -> Path:
    from llava_hydra.config.run_spec import write_spec
    from llava_hydra.eval.loading import adapted_base
    from llava_hydra.model.processor import make_processor

    out_dir = Path(out_dir)
    adapted, tokenizer, image_processor, cfg = adapted_base(adapter_dir, dtype)
    merged = adapted.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    make_processor(tokenizer, image_processor, merged, cfg.data.template,
                   cfg.data.image_aspect_ratio).save_pretrained(str(out_dir))
    write_spec(cfg, out_dir)  # no adapter_config.json beside it: the folder still loads as a full model
    log.info("wrote the merged model and its processor to %s", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llava_hydra.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter_dir", help="a LoRA run directory or one of its checkpoint-N directories")
    parser.add_argument("out_dir", help="where the merged Hugging Face model + processor are written")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="weights of the merged model (default: the run's dtype)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    merge(args.adapter_dir, args.out_dir, args.dtype)


if __name__ == "__main__":
    main()
