"""Models of the scoring cascade.

- :mod:`botwatch.models.canary`: the logistic-regression baseline a challenger must beat.
- :mod:`botwatch.models.stage1`: the stage-1 XGBoost model (``xgboost.spark``), scoring every account.
- :mod:`botwatch.models.sequences`: the heavy model's inputs gathered in Spark (each account's
  last events as ordered arrays; GraphSAGE-style means over sampled neighbours).
- :mod:`botwatch.models.heavy`: the stage-2 graph + sequence torch model (GRU over the action
  sequence, MLPs over tabular and neighbour features, a fused head): tensors, training with
  early stopping, batched prediction, save/load and dynamic int8 quantisation for the CPU.

Submodules are imported on demand (``heavy`` imports torch): import the one you use.
"""
