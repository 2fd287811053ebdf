"""The bridge's HTTP bodies (pydantic), sized from the settings so the OpenAPI schema is exact."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model

F32_MAX = 3.4028234663852886e38
"""Largest float32: a bigger JSON number would turn into infinity on its way to the model."""
MAX_LISTED_ERRORS = 10


class WindowBody(BaseModel):
    """The static face of the request model, for type checkers (see request_model)."""

    x: list[list[float]]


def request_model(length: int, channels: int) -> type[WindowBody]:
    """`{"x": [length rows of channels finite float32 numbers]}`; other keys are ignored."""
    number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-F32_MAX, le=F32_MAX)]
    row = Annotated[list[number], Field(min_length=channels, max_length=channels)]
    rows = Annotated[
        list[row],
        Field(min_length=length, max_length=length,
              description=f"The window: {length} rows (time steps) of {channels} numbers "
              "(channels), finite and within float32 range."),
    ]
    return create_model("InferRequest", __base__=WindowBody, x=(rows, ...))


def result_model(latent_dim: int, num_motifs: int) -> type[BaseModel]:
    """The 200 answer; it also checks a worker's result on its way out (extra keys dropped)."""
    number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    return create_model(
        "InferResult",
        latent=(Annotated[list[number], Field(min_length=latent_dim, max_length=latent_dim)],
                Field(description=f"{latent_dim} floats.")),
        motif_scores=(Annotated[list[number], Field(min_length=num_motifs,
                                                    max_length=num_motifs)],
                      Field(description=f"{num_motifs} floats.")),
        model=(str, Field(description="The model that answered.")),
        worker_id=(str, Field(description="The worker that answered.")),
    )


class ErrorBody(BaseModel):
    error: str = Field(description="A code: a worker's error code, or unauthorized, "
                       "invalid_body, too_large, unavailable, timeout, bad_reply.")
    detail: str = Field(description="One human sentence.")


class InvalidBody(ErrorBody):
    errors: list[dict[str, Any]] = Field(
        default_factory=list,
        description=f"Where the body is wrong (the first {MAX_LISTED_ERRORS} problems); "
        "absent when a worker found the window wrong.")


class HealthBody(BaseModel):
    status: Literal["ok", "unavailable"]
    reason: str | None = Field(None, description="Why no worker can answer (with 503 only).")
    workers: list[dict[str, Any]] = Field(
        description="Status documents (CONTRACT.md, Status): the live workers with 200, "
        "every known worker with 503.")


def describe_invalid(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One sentence naming the first problem, and the first few problems as a list."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    listed = []
    for err in errors[:MAX_LISTED_ERRORS]:
        msg = err["msg"]
        if err["type"] in ("less_than_equal", "greater_than_equal"):
            msg = f"Input should be within float32 range (magnitude at most {F32_MAX:.7g})"
        listed.append({"loc": _where(err["loc"]), "msg": msg, "type": err["type"]})
    first = listed[0]
    more = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{first['loc']}: {first['msg']}{more}", listed


def _where(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "body"
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
