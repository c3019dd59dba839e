"""``pemn eval``: a model file measured on its data.

:func:`evaluate_model_file` picks who measures the file: a multi-task ``.pemn`` file (or a request naming tasks)
goes to :func:`pemn.training.tasks.evaluate_task_file`; any other file to the workload its app metadata records
(:func:`pemn.training.workloads.workload_of_file`: top-1 test accuracy of an image classifier, validation loss of a
character-level language model), so a new kind of model file is a new entry of
:data:`~pemn.training.workloads.WORKLOADS`, not a new branch here. It returns an
:class:`~pemn.training.evaluation.EvalReport` (a JSON object and the text lines); the command line prints one.
"""

from __future__ import annotations

from pemn.training.errors import OptionError
from pemn.training.evaluation import EvalReport, EvalRequest
from pemn.training.tasks import evaluate_task_file, holds_tasks
from pemn.training.workloads import workload_of_file

__all__ = ["evaluate_model_file"]


def evaluate_model_file(request: EvalRequest) -> EvalReport:
    """The metrics of the model file ``request.artifact`` on its data (see the module doc).
    :class:`~pemn.training.errors.OptionError` for a file no workload measures (a transformers model) or options
    that contradict the file; FormatError / DatasetError for a file or data that cannot be used."""
    request_tasks = request.tasks or request.all_tasks or request.infer_task
    if request_tasks or (request.kind.name == "pemn" and holds_tasks(request.artifact)):
        return evaluate_task_file(request)
    workload = workload_of_file(request.app, request.dataset)
    if workload is None:
        app = request.app or {}
        raise OptionError(f"{request.artifact} holds a {app.get('kind')} {app.get('model')}; pemn eval measures "
                          "image classifiers and character-level language models on their datasets. Evaluate it in "
                          "Python on your task's data: model = pemn.load(FILE) rebuilds it (no code needed)")
    return workload.evaluate_file(request)
