"""hf-distill: knowledge distillation for Hugging Face Transformers, Trainer-native."""

from .adversarial import AttackSettings
from .augment import augment_input_ids
from .cache import TeacherLogitCache, build_teacher_cache
from .checks import check_label_range, check_teacher_student, infer_task
from .config import DistillationArguments
from .data import (
    add_prefix_space,
    conll_label_names,
    iob1_to_iob2,
    load_text_classification_file,
    mix_unlabeled,
    read_conll,
    tokenize_and_align_labels,
)
from .ensemble import combine_teacher_logits
from .features import FeatureProjector, attention_kl, hidden_state_loss, uniform_layer_map
from .losses import (
    distillation_objective,
    hard_label_cross_entropy,
    logit_mse,
    pseudo_labels,
    soft_cross_entropy,
    soft_kl,
)
from .metrics import Seqeval, sequence_classification_metrics, token_classification_metrics
from .model_card import build_model_card
from .robustness import evaluate_robustness
from .schedules import scheduled_value
from .self_distillation import ema_update
from .student import create_student
from .trainer import DistillationTrainer
from .views import TeacherViewCollator, add_noisy_view, typo_noise

__version__ = "0.1.0"

__all__ = [
    "AttackSettings",
    "DistillationArguments",
    "DistillationTrainer",
    "FeatureProjector",
    "Seqeval",
    "TeacherLogitCache",
    "TeacherViewCollator",
    "add_noisy_view",
    "add_prefix_space",
    "attention_kl",
    "augment_input_ids",
    "build_model_card",
    "build_teacher_cache",
    "check_label_range",
    "check_teacher_student",
    "combine_teacher_logits",
    "conll_label_names",
    "create_student",
    "distillation_objective",
    "ema_update",
    "evaluate_robustness",
    "hard_label_cross_entropy",
    "hidden_state_loss",
    "infer_task",
    "iob1_to_iob2",
    "load_text_classification_file",
    "logit_mse",
    "mix_unlabeled",
    "pseudo_labels",
    "read_conll",
    "scheduled_value",
    "sequence_classification_metrics",
    "soft_cross_entropy",
    "soft_kl",
    "token_classification_metrics",
    "tokenize_and_align_labels",
    "typo_noise",
    "uniform_layer_map",
]
