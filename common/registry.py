"""Every model type: how 02_train.py fits it (--model) and how its checkpoint recommends (model_type).

The models of CLOSED_FORM are fitted in one step (common.training.fit_closed_form); their module defines
  fit_closed_form(model_type, cfg, ds, device) -> (state_dict, model_args, recommender)
Every other model is trained by the one trainer (common.trainer); its module, named in TRAINED, defines
  build_task(cfg, ds, rng, device)  -> a task (module, batches, loss, checkpoint, evaluate)
Both kinds define
  recommender(ckpt, ds, device)     -> an object whose score(users) gives [B, n_items + 1] scores
Adding a model is its file plus one line here.
"""
from __future__ import annotations

import importlib

CLOSED_FORM = {
    "pop": "common.recommend",
    "ease": "common.recommend",
    "transition": "common.transition",
}
TRAINED = {
    "sasrec": "common.next_item",
    "multvae": "common.vae",
    "recvae": "common.vae",
    "cloze": "common.cloze",
}
MODEL_TYPES = (*CLOSED_FORM, *TRAINED)


def model_module(model_type: str):
    """The module that trains and scores `model_type` (imported on first use)."""
    return importlib.import_module(CLOSED_FORM.get(model_type) or TRAINED[model_type])
