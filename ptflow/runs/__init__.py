"""The run record and MLflow: the record a run writes itself (``record``), the store it is
mirrored to (``tracking``, ``tracker``, ``mlflow_calls``, ``mlflow_models``,
``mlflow_datasets``, ``logged_model_check``, ``params``), how runs are named
(``naming``) and summarised (``summary``), sweeps' parent runs (``sweep_parent``), runs
whose process vanished (``stale``) and the ``ptflow-runs`` command (``runs_cli``).

May import: ``ptflow.core``, ``ptflow.inputs``, ``ptflow.measure``, ``ptflow.decide``.
"""
