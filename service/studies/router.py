"""HTTP for studies: thin handlers that parse, call ``studies.service`` and shape the response."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status

from jobs import datasets, limits
from jobs.models import Study
from jobs.status import StudyStatus
from service.deps import DIGITS_ONLY, MAX_ID, AutocommitSessionDep, CurrentOwner, SessionDep, SettingsDep
from service.openapi import error_responses
from service.pagination import CURSOR_PARAM, decode_cursor, encode_cursor
from service.paths import id_segment
from service.strict_json import StrictJsonRoute
from service.studies.schemas import StudyOut, StudyPage, StudySummary, TrialList, TrialOut
from studies import service
from studies.spec import StudySpec, trial_spec

log = logging.getLogger(__name__)
router = APIRouter(
    route_class=StrictJsonRoute, prefix="/v1/studies", tags=["studies"], responses=error_responses(401, 503)
)
NO_SUCH_STUDY = {404: "No such study, or another owner's (the same answer)."}
STUDY_PATH = f"/{id_segment('study_id')}"
LOCATION = {"Location": {"description": "The study's URL.", "schema": {"type": "string"}, "required": True}}
CREATE_RULES = """Validate the study, store it, and queue its first trials (same key + same body: same study).

Each trial is an ordinary job (one per seed) of yours, linked by `study_id`; the study asks Optuna's
TPE sampler for new trials as trials end, prunes trials by the validation values their jobs report
after each epoch, and once the budget is spent trains the winner again on every seed with the
reference (the finalists), whose student is the study's. Each parameter's bounds and choices (alone,
under each value of its conditions) and each initial trial are tried against the base spec here: one
that makes an invalid job is a 422 naming `space.N` or `initial.N`.
`base.method: {name: auto}` searches the registered methods and their main weights."""
STUDY_EXAMPLES: dict[str, Any] = {
    "auto": {
        "summary": "Find the best student for a dataset",
        "value": {
            "name": "mfeat-auto",
            "base": {
                "name": "mfeat",
                "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
                "method": {"name": "auto"},
                "train": {"epochs": 40},
            },
            "trials": 24,
            "parallelism": 2,
        },
    },
    "space": {
        "summary": "Tune logit KD's weight and temperature",
        "value": {
            "name": "mfeat-kd",
            "base": {
                "name": "mfeat",
                "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
                "method": {"name": "logit_kd"},
            },
            "space": [
                {"path": "method.kd_weight", "type": "float", "low": 0.25, "high": 8, "log": True},
                {"path": "method.kd_temperature", "type": "categorical", "choices": [1, 2, 4, 8]},
            ],
            "trials": 12,
            "pruner": {"name": "median", "startup_trials": 4, "warmup_epochs": 5},
        },
    },
}


def get_owned_study(
    study_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The study's id.")],
    session: AutocommitSessionDep,
    owner: CurrentOwner,
) -> Study:
    """The path's study if it belongs to the caller, else a 404."""
    try:
        return service.get_study(session, owner_id=owner.id, study_id=study_id)
    finally:
        session.close()


StudyDep = Annotated[Study, Depends(get_owned_study)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    description=CREATE_RULES,
    responses={
        201: {"description": "The study, running.", "headers": LOCATION},
        200: {"model": StudyOut, "description": "Replay with the same Idempotency-Key and body.", "headers": LOCATION},
        **error_responses(409, 413, 429, said={409: "The Idempotency-Key was used for another study."}),
    },
)
def create_study(
    spec: Annotated[StudySpec, Body(openapi_examples=STUDY_EXAMPLES)],
    request: Request,
    response: Response,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=200, description="Retry-safe creates."),
    ] = None,
) -> StudyOut:
    """Create a study."""
    data_check = trial_spec(spec.base, {"method.name": "student_only"})  # the data is every trial's
    limits.check_resources(
        data_check,
        max_procs_per_node=settings.max_procs_per_node,
        gpus_per_node=settings.gpus_per_node,
        multi_node=settings.ray_address is not None,
        at="base.",
    )
    datasets.check_data_reference(session, owner_id=owner.id, spec=data_check, data_allow=settings.data_allow)
    study, created = service.create_study(
        session,
        owner_id=owner.id,
        spec=spec,
        idempotency_key=idempotency_key,
        max_queued=settings.max_queued_per_owner,
    )
    if created:
        try:
            service.advance_and_publish(
                session,
                study_id=study.id,
                database_url=settings.resolved_database_url,
                max_attempts=settings.max_attempts,
                enqueue=request.app.state.enqueue,
            )
        except Exception:  # the study is stored: the reaper's next pass asks for its first trials
            log.exception("study %s: its first advance failed; the reaper will retry", study.id)
        session.refresh(study)
        session.commit()
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/studies/{study.id}"
    return StudyOut.of_study(study, owner=owner.name)


@router.get("", response_model=StudyPage)
def list_studies(
    session: AutocommitSessionDep,
    owner: CurrentOwner,
    status_filter: Annotated[list[StudyStatus] | None, Query(alias="status", description="Repeat for several.")] = None,
    limit: Annotated[int, Query(ge=1, le=200), DIGITS_ONLY] = 50,
    cursor: CURSOR_PARAM = None,
) -> StudyPage:
    """The caller's studies, newest first, optionally only some statuses; keyset-paginated."""
    studies, next_id = service.list_studies(
        session,
        owner_id=owner.id,
        statuses=list(status_filter or []),
        limit=limit,
        before_id=decode_cursor("s", cursor) if cursor else None,
    )
    return StudyPage(
        items=[StudySummary.of(study, owner=owner.name) for study in studies],
        next_cursor=encode_cursor("s", next_id) if next_id is not None else None,
    )


@router.get(STUDY_PATH, response_model=StudyOut, responses=error_responses(404, said=NO_SUCH_STUDY))
def get_study(study: StudyDep, owner: CurrentOwner) -> StudyOut:
    """One study: status, spec and, once succeeded, the winner with its gain."""
    return StudyOut.of_study(study, owner=owner.name)


@router.get(f"{STUDY_PATH}/trials", response_model=TrialList, responses=error_responses(404, said=NO_SUCH_STUDY))
def list_study_trials(study: StudyDep, session: AutocommitSessionDep, settings: SettingsDep) -> TrialList:
    """The study's trials in order: state, values, objective and jobs."""
    trials = service.list_trials(session, study=study, database_url=settings.resolved_database_url)
    return TrialList(items=[TrialOut.of(trial) for trial in trials])


@router.post(
    f"{STUDY_PATH}/cancel",
    response_model=StudyOut,
    responses=error_responses(404, 409, 413, said={**NO_SUCH_STUDY, 409: "The study already finished."}),
)
def cancel_study(study: StudyDep, session: SessionDep, owner: CurrentOwner, settings: SettingsDep) -> StudyOut:
    """Cancel: no more trials; queued trials are cancelled, running ones stop at their next step."""
    current = service.cancel_study(session, study=study, database_url=settings.resolved_database_url)
    return StudyOut.of_study(current, owner=owner.name)
