"""Every model type: how 02_train.py fits it (--model) and how its checkpoint recommends (model_type).

pop and ease are fitted in one step (common.training.fit_closed_form). Every other model is trained by
the one trainer (common.trainer); its module, named in TRAINED, defines
  build_task(cfg, ds, rng, device)  -> a task (module, batches, loss, checkpoint, evaluate)
  recommender(ckpt, ds, device)     -> an object whose score(users) gives [B, n_items + 1] scores
Adding a model is its file plus one line here.
"""
from __future__ import annotations

import importlib

CLOSED_FORM = ("pop", "ease")
TRAINED = {
    "sasrec": "common.next_item",
    "multvae": "common.vae",
    "recvae": "common.vae",
    "cloze": "common.cloze",
}
MODEL_TYPES = (*CLOSED_FORM, *TRAINED)


def model_module(model_type: str):
    """The module that trains and scores `model_type` (imported on first use)."""
    return importlib.import_module(TRAINED[model_type])
