"""hf-distill: knowledge distillation for Hugging Face Transformers, Trainer-native."""

from .adversarial import AttackSettings
from .cache import TeacherLogitCache, build_teacher_cache
from .checks import check_label_range, check_teacher_student, infer_task
from .config import DistillationArguments
from .data import (
    conll_label_names,
    iob1_to_iob2,
    load_text_classification_file,
    read_conll,
    tokenize_and_align_labels,
)
from .losses import distillation_objective, hard_label_cross_entropy, logit_mse, soft_cross_entropy, soft_kl
from .metrics import Seqeval, sequence_classification_metrics, token_classification_metrics
from .model_card import build_model_card
from .robustness import evaluate_robustness
from .schedules import scheduled_value
from .student import create_student
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "AttackSettings",
    "DistillationArguments",
    "DistillationTrainer",
    "Seqeval",
    "TeacherLogitCache",
    "build_model_card",
    "build_teacher_cache",
    "check_label_range",
    "check_teacher_student",
    "conll_label_names",
    "create_student",
    "distillation_objective",
    "evaluate_robustness",
    "hard_label_cross_entropy",
    "infer_task",
    "iob1_to_iob2",
    "load_text_classification_file",
    "logit_mse",
    "read_conll",
    "scheduled_value",
    "sequence_classification_metrics",
    "soft_cross_entropy",
    "soft_kl",
    "token_classification_metrics",
    "tokenize_and_align_labels",
]
