"""The projector's weights as files: stage 1 writes ``mm_projector.safetensors`` (keys under
the Llava checkpoint's own names), stage 2 loads it, or LLaVA's ``mm_projector.bin``
(``model.mm_projector.0.weight`` ... for mlp2x_gelu, ``model.mm_projector.weight`` for
linear), converting LLaVA's keys. Also the identity start of a ``linear`` projector's second
layer. Untrusted pickles are never unpickled beyond tensors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from llava_hydra.model.llava import find_llava_model, projector_type
from llava_hydra.model.zero3 import full_shape, gathered

log = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.safetensors"
LLAVA_MLP_NAMES = {"0": "linear_1", "2": "linear_2"}  # LLaVA's nn.Sequential(Linear, GELU, Linear)


def init_projector(projector, kind: str) -> None:
    """A new ``linear`` projector's linear_2 becomes the identity (mlp2x_gelu keeps its init)."""
    if kind != "linear":
        return
    with gathered(projector.linear_2.parameters(), modify=True), torch.no_grad():
        weight = projector.linear_2.weight
        if weight.numel():  # on the rank that holds the full tensor
            weight.copy_(torch.eye(weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device))
            projector.linear_2.bias.zero_()


def read_projector_file(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state under linear_1/linear_2 names, the projector type the file holds, if it says)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:  # LLaVA's mm_projector.bin: a pickle, so never unpickled beyond tensors
        raw = torch.load(path, map_location="cpu", weights_only=True)
    state, kind = {}, None
    for key, value in raw.items():
        if "multi_modal_projector." in key:  # ours
            state[key.split("multi_modal_projector.", 1)[1]] = value
        elif "mm_projector." in key:  # LLaVA's
            sub = key.split("mm_projector.", 1)[1]
            head, _, rest = sub.partition(".")
            if head in ("weight", "bias") and not rest:  # LLaVA v1's single nn.Linear
                kind = "linear"
                state[f"linear_1.{head}"] = value
            else:
                kind = "mlp2x_gelu" if head in LLAVA_MLP_NAMES else kind
                state[f"{LLAVA_MLP_NAMES.get(head, head)}.{rest}"] = value
    if kind is None:  # ours: the config.json written beside it records the type
        config = path.parent / "config.json"
        if config.exists():
            kind = json.loads(config.read_text()).get("mm_projector_type")
    return state, kind


def load_projector(model, path: str | Path, model_name: str = "<model>") -> None:
    """Load our ``mm_projector.safetensors`` or LLaVA's ``mm_projector.bin`` into the
    projector. A type or shape mismatch is an error naming both."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"stage 1 projector not found: {path}\n"
            f"  it is written by: python -m llava_hydra stage=pretrain model={model_name}\n"
            f"  or point stage.pretrain_mm_mlp_adapter at a projector file (ours or LLaVA's mm_projector.bin)")
    state, found_kind = read_projector_file(path)
    core = find_llava_model(model)
    projector = core.multi_modal_projector
    expected_kind = projector_type(core.config)
    if found_kind is not None and found_kind != expected_kind:
        raise ValueError(f"{path}: holds a {found_kind} projector, the model expects {expected_kind} "
                         f"(set model.mm_projector_type={found_kind} or use a {expected_kind} projector file)")
    with gathered(projector.parameters(), modify=True):
        expected = {n: full_shape(p) for n, p in projector.named_parameters()}
        if expected_kind == "linear" and set(state) == {"linear_1.weight", "linear_1.bias"}:
            sample = projector.linear_2.weight
            state["linear_2.weight"] = torch.eye(*expected["linear_2.weight"], dtype=sample.dtype)
            state["linear_2.bias"] = torch.zeros(expected["linear_2.bias"], dtype=sample.dtype)
        if set(state) != set(expected):
            raise ValueError(f"{path}: projector keys {sorted(state)} do not match the model's {sorted(expected)} "
                             f"(model.mm_projector_type={expected_kind})")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key]):
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(expected[key])} (different LLM or vision tower?)")
        if projector.linear_1.weight.numel():
            projector.load_state_dict(state)
    log.info("loaded %s projector weights from %s", expected_kind, path)


def projector_state(model) -> dict[str, torch.Tensor]:
    """The projector's weights under the Llava checkpoint's own key names."""
    return {f"multi_modal_projector.{k}": v.detach().cpu().contiguous()
            for k, v in model.model.multi_modal_projector.state_dict().items()}
