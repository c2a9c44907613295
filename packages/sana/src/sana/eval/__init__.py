"""Evaluation on the synthetic shapes world: a deterministic detector and a GenEval-style benchmark.

Usage:

    prompts = eval_prompts(300)                      # held-out prompts, 50 per category
    report = evaluate(generate, prompts)             # generate(texts, seed) -> one PIL image per text
    print(report.to_markdown())                      # single_object ... color_attr, overall

`evaluate_ground_truth()` scores the world's own renderings (the evaluator's accuracy, ~1.0);
`validate_detector()` measures the detector alone, clean or perturbed; `reconstruction_scores` gives an
autoencoder's PSNR/SSIM on `heldout_images(n)`; `text_gain` tells whether a transformer uses its prompt at all;
`sample_grid` tiles images into one picture.
"""

from .detector import PERTURBATIONS, Detection, detect, validate_detector
from .shapes import (
    CATEGORIES,
    EvalPrompt,
    EvalReport,
    ObjectSpec,
    PromptRecord,
    eval_prompts,
    evaluate,
    evaluate_ground_truth,
    heldout_images,
    overall_interval,
    prompt_losses,
    reconstruction_scores,
    relation_holds,
    same_objects,
    sample_grid,
    score,
    text_gain,
)

__all__ = (
    # detector
    "PERTURBATIONS",
    "Detection",
    "detect",
    "validate_detector",
    # benchmark
    "CATEGORIES",
    "EvalPrompt",
    "EvalReport",
    "ObjectSpec",
    "PromptRecord",
    "eval_prompts",
    "evaluate",
    "evaluate_ground_truth",
    "score",
    "relation_holds",
    # autoencoder and transformer diagnostics, grids
    "text_gain",
    "prompt_losses",
    "heldout_images",
    "overall_interval",
    "reconstruction_scores",
    "same_objects",
    "sample_grid",
)
