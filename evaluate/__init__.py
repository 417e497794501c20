"""Scoring trained heads: metrics, the two evaluation protocols, ABAW submissions, ablations.

The public interface (what the CLI and the README's Python API use) is ``__all__``: one
config and one runner per command, the metric function and the submission file helpers.
Importing this package stays light (no torch): the configs and the folder layouts
(``ReportDir``, ``AblationDir``) load now, the rest on first use.
It reaches ``expr.train_heads`` only through that package's public interface.
"""

from typing import TYPE_CHECKING

from expr.evaluate.config import AblateConfig, EvaluateConfig, Keep, PredictConfig
from expr.evaluate.report_dir import AblationDir, ReportDir
from expr.core.lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # the names of the TYPE_CHECKING block below, on first use

if TYPE_CHECKING:  # THE list of lazy names: pyright and editors see them, lazy_getattr reads it
    from expr.evaluate.ablation import AblationReport, run_ablation
    from expr.evaluate.evaluation import EvalReport, evaluate_run
    from expr.evaluate.grid import KEYS
    from expr.evaluate.class_scores import ClassificationMetrics, compute_metrics
    from expr.evaluate.prediction import PredictOut, PredictReport, listed_ids, predict_run
    from expr.evaluate.provenance import DEMO_CAVEAT, random_weights_banner
    from expr.evaluate.report_sources import report_from_run
    from expr.evaluate.submission import (check_ids, read_probabilities, read_submission, validate_submission,
                                          write_submission)

__all__ = [
    "AblateConfig", "EvaluateConfig", "PredictConfig", "ReportDir", "AblationDir", "EvalReport", "evaluate_run",
    "PredictReport", "predict_run", "AblationReport", "run_ablation", "ClassificationMetrics", "compute_metrics",
    "write_submission", "read_submission", "validate_submission", "read_probabilities",
    # what the application layer (expr/app/commands, expr.app.pipeline, expr.app.demo) uses besides the runners
    "Keep", "KEYS", "PredictOut", "listed_ids", "check_ids", "DEMO_CAVEAT", "random_weights_banner", "report_from_run",
]
