"""ReFACT (Arad, Orgad, Belinkov): a rank-one edit of a text encoder's MLP output matrix, one file per step.

- ``hparams.py``     the hyperparameters (the paper's defaults);
- ``keys.py``        k_e, v_e, k* over the context templates, u = C^-1 k*, earlier edits' keys;
- ``linalg.py``      the cached Cholesky factor of the second moment C;
- ``loss.py``        the v* objective: similarity, self-target anchoring, loss;
- ``values.py``      the v* optimisers: one request (the reference) and N requests vectorised;
- ``insert.py``      r = (v* - v_e) / (k_e . u), W += r u^T, verified W k_e == v*;
- ``edit.py``        one slot: 1 request (``compute_edit``) or N (``compute_values``);
- ``model_edit.py``  one request over every planned encoder slot;
- ``batch.py``       N requests as one delta: rank-one sum, joint solve (``joint_solve.py``) or spread;
- ``method.py``      ``ReFACTMethod``: the driver behind ``engine.methods.get_method("refact")``.

This package's ``__init__`` stays import-free: the store reads ``hparams`` without loading torch.
"""
