"""The task endpoints (multipart/form-data): ``/v1/image`` (the image as mxr0 read it, windowed), ``/v1/report``
(frontal, lateral, prior + prior report; ``stream=true`` for server-sent events), ``/v1/vqa``, ``/v1/ground``
(boxes in original pixels), ``/v1/classify``, ``/v1/zero-shot``, ``/v1/similarity`` (patch-similarity map)."""

from __future__ import annotations

from fastapi import APIRouter, Request  # at module level: FastAPI resolves the routes' (string) annotations here
from starlette.concurrency import run_in_threadpool

from mxr0.serve.errors import ApiError
from mxr0.serve.forms import form_of, image_field, int_field, text_field
from mxr0.serve.images import display_png, heat_png
from mxr0.serve.replies import finish, sse, streaming, wait

router = APIRouter()


def _gen(form) -> dict:
    """The form's generation settings (``max_tokens``, when given)."""
    return {k: v for k, v in {"max_new_tokens": int_field(form, "max_tokens", None)}.items() if v is not None}


@router.post("/v1/image")
async def image(request: Request):
    form = await form_of(request)
    im = await image_field(request.app.state.session, form, "image")
    preset = text_field(form, "window", "default")
    png, w, h = await run_in_threadpool(display_png, im.pixels, preset)
    return {**im.info(), "window": preset, "png": png, "display_width": w, "display_height": h}


@router.post("/v1/report")
async def report(request: Request):
    session = request.app.state.session
    form = await form_of(request)
    with session.preparing():
        images = {}
        for k in ("frontal", "lateral", "prior"):
            im = await image_field(session, form, k, required=k == "frontal")
            if im is not None:
                images[k] = im
        sections = {s: text_field(form, s) for s in ("indication", "technique", "comparison")}
        gen = _gen(form)
        job = await run_in_threadpool(session.study_job, images, None, sections,
                                      text_field(form, "prior_report", "", 20000), **gen)
        extra = {"views": [k for k in images if k not in job.unused_views], "unused_views": job.unused_views}
        response = None
        if text_field(form, "stream", "false").lower() in ("1", "true", "yes"):
            def frame(delta):
                if delta is not None:
                    yield sse({"delta": delta})

            def final(res):
                yield sse({"done": True, "text": res["text"], "finish_reason": finish(res["finish_reason"]), **extra})

            response = streaming(job, frame, final)
        session.submit(job)
    if response is not None:
        return response
    res = await wait(job, request)
    return {"text": res["text"], "finish_reason": finish(res["finish_reason"]), **extra}


@router.post("/v1/vqa")
async def vqa(request: Request):
    session = request.app.state.session
    form = await form_of(request)
    q = text_field(form, "question").strip()
    if not q:
        raise ApiError(400, "the form field 'question' is empty", "missing_question")
    gen = _gen(form)
    with session.preparing():
        im = await image_field(session, form, "image")
        job = session.submit(await run_in_threadpool(session.single_job, im, q, **gen))
    res = await wait(job, request)
    return {"question": q, "answer": res["text"], "finish_reason": finish(res["finish_reason"])}


@router.post("/v1/ground")
async def ground(request: Request):
    session = request.app.state.session
    form = await form_of(request)
    phrase = text_field(form, "phrase").strip()
    if not phrase:
        raise ApiError(400, "the form field 'phrase' is empty", "missing_phrase")
    gen = _gen(form)
    with session.preparing():
        im = await image_field(session, form, "image")
        job = session.submit(await run_in_threadpool(session.single_job, im, session.grounding_prompt(phrase),
                                                     "grounding", **gen))
    res = await wait(job, request)
    return {"phrase": phrase, "answer": res["text"], **session.boxes_of(res["text"], im)}


@router.post("/v1/classify")
async def classify(request: Request):
    session = request.app.state.session
    form = await form_of(request)
    session._need("classifier")
    im = await image_field(session, form, "image")
    return {"model": session.names["classifier"], "probabilities": await run_in_threadpool(session.classify, im)}


@router.post("/v1/zero-shot")
async def zero_shot(request: Request):
    session = request.app.state.session
    form = await form_of(request)
    session._need("align")
    im = await image_field(session, form, "image")
    labels = [l.strip() for l in text_field(form, "labels").split(",") if l.strip()] or None
    return {"model": session.names["align"], "probabilities": await run_in_threadpool(session.zero_shot, im, labels)}


@router.post("/v1/similarity")
async def similarity(request: Request):
    session = request.app.state.session
    form = await form_of(request)
    session._need("align")
    im = await image_field(session, form, "image")
    phrase = text_field(form, "phrase")
    out = await run_in_threadpool(session.similarity, im, phrase)
    png, w, h = await run_in_threadpool(heat_png, out["map"], out["geometry"], im.height, im.width)
    grid = out["grid"]
    return {"model": session.names["align"], "phrase": phrase.strip(), "heatmap_png": png, "width": w, "height": h,
            "grid": [[round(float(v), 4) for v in row] for row in grid], "min": round(float(grid.min()), 4),
            "max": round(float(grid.max()), 4), "image_size": {"width": im.width, "height": im.height}}


__all__ = ["router"]
