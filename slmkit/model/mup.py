"""µP parameter groups: what learning rate and weight decay each tensor gets.

Xmodel-2 Table 6: 2-D hidden tensors train at lr × 1/m (m = d_model/dim_model_base); embeddings and
norm gains at the base lr; norms/gains get no weight decay. Each group carries `lr_scale` so a schedule
can set `group["lr"] = base_lr(step) * group["lr_scale"]`, and `kind` so the trainer can hand the
hidden matrices to Muon.
"""

from __future__ import annotations

from torch import nn


def classify(name: str, param) -> str:
    """'hidden' (2-D matrices inside blocks, untied lm_head), 'embedding', or 'norm' (1-D gains)."""
    if param.ndim < 2:
        return "norm"
    if name.startswith("embed_tokens"):
        return "embedding"
    return "hidden"


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, kinds: tuple[str, ...] | None = None) -> list[dict]:
    cfg = model.cfg
    scales = {"hidden": 1.0 / cfg.width_mult, "embedding": 1.0, "norm": 1.0}
    decay = {"hidden": weight_decay, "embedding": weight_decay, "norm": 0.0}
    buckets: dict[str, list] = {"hidden": [], "embedding": [], "norm": []}
    names: dict[str, list[str]] = {"hidden": [], "embedding": [], "norm": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = classify(name, p)
        buckets[kind].append(p)
        names[kind].append(name)
    groups = []
    for kind in ("hidden", "embedding", "norm"):
        if buckets[kind] and (kinds is None or kind in kinds):
            groups.append(dict(params=buckets[kind], param_names=names[kind], kind=kind, lr=lr * scales[kind],
                               lr_scale=scales[kind], weight_decay=decay[kind]))
    return groups
