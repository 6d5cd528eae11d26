"""What a job's model card says, read from the job's rows and the studio's settings; the card itself
is written by sam3_lora.model_card (the one writer the command line uses too).

Base model: the Hub id of the weights the job trained (sam3_lora.hub_ids.base_model_id):
SAM3_BASE_MODEL when the job trained SAM3_MODEL (not the tiny fallback), else model.source when
it is a Hub id; none for the tiny random SAM3. (model.base_model is a worker key in the studio:
the setting decides, app.jobs.recipe.WORKER_KEYS.)
"""
from __future__ import annotations

from sqlalchemy import Engine

from app.settings import Settings
from app.store.adapters import list_adapters
from app.store.proposal_outcomes import proposal_outcomes
from sam3_lora.config import TrainConfig
from sam3_lora.hub_ids import base_model_id
from sam3_lora.model_card import ModelCardFacts
from sam3_lora.train import TrainResult


def job_base_model(settings: Settings, cfg: TrainConfig) -> str | None:
    """The Hub id a job's adapter names as its base (see the module docstring), or None."""
    declared = settings.SAM3_BASE_MODEL if cfg.model.source == settings.SAM3_MODEL else ""
    return base_model_id(cfg.model.source, declared or None)


def job_card_facts(settings: Settings, job_id: int, project_name: str, cfg: TrainConfig, result: TrainResult,
                   partial: bool, review_outcomes: dict | None = None) -> ModelCardFacts:
    """The card of job `job_id`'s adapter; `partial` when it was cancelled before its last step;
    review_outcomes: `card_review_outcomes` of its project."""
    status = f"partial: stopped at step {result.steps} on request" if partial else f"complete: {result.steps} steps"
    return ModelCardFacts(
        title=f"SAM3 LoRA adapter of job {job_id}" + (f" ({project_name})" if project_name else ""),
        base_model=job_base_model(settings, cfg), config=cfg.to_dict(),
        dataset_name=project_name or f"the labels of job {job_id}", status=status, history=result.history,
        dataset=result.dataset, eval_before=result.eval_before, eval_after=result.eval_after,
        review_outcomes=review_outcomes)


def card_review_outcomes(engine: Engine, project_id: int) -> dict:
    """The project's proposal outcomes (app.store.proposal_outcomes) keyed by model name for the card."""
    names = {f"adapter:{a.id}": f"adapter {a.name} (#{a.id})" for a in list_adapters(engine, project_id)}
    return {("base SAM3" if label == "base" else names.get(label, label)): per_concept
            for label, per_concept in proposal_outcomes(engine, project_id).items()}
