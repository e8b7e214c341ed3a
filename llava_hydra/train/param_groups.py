"""The optimizer's parameter groups, written out: which trained part (LLM, projector, vision
tower) each parameter belongs to, which groups get their own learning rate
(``training.mm_projector_lr``, ``training.vision_tower_lr``) and which decay, and, for the
logs, which group trains each part."""

from __future__ import annotations

from llava_hydra.model.llava import OWN_LR, PARTS, part_modules


def part_by_param(model) -> dict[int, str]:
    """id(parameter) -> its part (``model.llava.PARTS``)."""
    return {id(p): part for part, modules in part_modules(model).items() for m in modules for p in m.parameters()}


def parameter_groups(model, decay_names: set[str], weight_decay: float, **own_lrs: float | None) -> list[dict]:
    """Optimizer groups: (part, decay) for each trainable part with its own learning rate
    (``own_lrs``: keyword arguments named as ``training``'s keys, e.g. ``mm_projector_lr=2e-5``).

    Parts with no learning rate of their own join the "base" groups at the base rate. Empty
    groups are dropped; frozen parameters appear in none."""
    unknown = set(own_lrs) - set(OWN_LR.values())
    if unknown:
        raise TypeError(f"parameter_groups: no part has its own rate {sorted(unknown)}; known: {sorted(OWN_LR.values())}")
    part_of = part_by_param(model)
    own_lr = {part: own_lrs.get(key) for part, key in OWN_LR.items()}
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = part_of.get(id(p), "base")
        if own_lr.get(part) is None:
            part = "base"
        decay = name in decay_names
        group = groups.setdefault((part, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                                  "name": f"{part}_{'decay' if decay else 'no_decay'}"})
        if part != "base":
            group["lr"] = own_lr[part]
        group["params"].append(p)
    return list(groups.values())


def part_groups(model, groups: list[dict]) -> dict[str, int]:
    """Each trained part (``PARTS``) -> the index of an optimizer group
    that trains it (its own group, or a base one); parts with nothing trainable are left out."""
    part_of = part_by_param(model)
    where = {}
    for i, group in enumerate(groups):
        for p in group["params"]:
            where.setdefault(part_of.get(id(p), "llm"), i)
    return {part: where[part] for part in PARTS if part in where}
