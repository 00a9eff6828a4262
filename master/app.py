"""The FastAPI app: OpenAI routes, probes, metrics; the serving modules do the work."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from master.access_log import AccessLogMiddleware, AccessRecord
from master.auth import ApiKeyChecker, ApiKeyMiddleware
from master.body_limit import BodyLimitMiddleware
from master.bundle import ModelBundle
from master.config import MasterConfig
from master.errors import install_error_handlers
from master.generation import Generator
from master.metrics import Metrics
from master.openai_requests import ChatCompletionRequest, CompletionRequest
from master.openai_responses import ModelCard, ModelList
from master.ready_watch import ReadyWatch
from master.resume import ResumeLimits
from master.resume_registry import RunRegistry
from master.serving import ServingContext, json_response
from master.serving_chat import chat_completion
from master.serving_completion import completion
from master.serving_tokenize import (DetokenizeRequest, TokenizeChatRequest,
                                     TokenizeCompletionRequest, detokenize, tokenize)

log = logging.getLogger("duet.master")


def _record(request: Request) -> AccessRecord:
    return getattr(request.state, "access", None) or AccessRecord()


def _add_middleware(app: FastAPI, config: MasterConfig) -> None:
    """Keys, CORS, body limit and the access log; the last added runs first (outermost)."""
    app.add_middleware(ApiKeyMiddleware, checker=ApiKeyChecker(config.api_keys),
                       prefix=("/v1/", "/tokenize", "/detokenize"))
    if config.cors_allow_origins:  # off by default: browsers on other origins get no answer
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_allow_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id",
                                          "last-event-id"],  # resumable streams
                           expose_headers=["x-request-id"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_request_body_bytes)
    app.add_middleware(AccessLogMiddleware, log_prompts=config.log_prompts)


def _readiness(config: MasterConfig, generator: Generator, watch: ReadyWatch) -> JSONResponse:
    """/ready: 200 when this API can serve; "draining" (SIGTERM) makes the VRRP agent resign."""
    ready, reason = generator.readiness()
    if ready and config.role == "master" and not getattr(generator, "active", True):
        # a deactivated master must fail its VRRP health check, so the VIP moves away
        ready, reason = False, "deactivated (POST /admin/activate to serve again)"
    draining = bool(getattr(generator, "draining", False))
    watch.probed(draining)
    return JSONResponse({"ready": ready, "reason": reason, "draining": draining},
                        status_code=200 if ready else 503)


def create_app(config: MasterConfig, generator: Generator, bundle: ModelBundle,
               metrics: Metrics | None = None, lifespan=None) -> FastAPI:
    """The API of one master (or standby). `lifespan` starts and stops the scheduler."""
    app = FastAPI(title="duet", lifespan=lifespan, docs_url=None, redoc_url=None)
    pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="duet-tokenize")
    limits = ResumeLimits(config.resume_detached_s, config.resume_keep_s,
                          config.resume_keep_bytes)
    ctx = ServingContext(config, generator, bundle,
                         metrics or Metrics(config.served_model_name), pool, RunRegistry(limits))
    app.state.ctx = ctx
    app.state.ready_watch = ReadyWatch()
    install_error_handlers(app)
    _add_middleware(app, config)

    @app.post("/v1/chat/completions")
    async def _chat(req: ChatCompletionRequest, request: Request):
        return await chat_completion(ctx, req, request, _record(request))

    @app.post("/v1/completions")
    async def _completions(req: CompletionRequest, request: Request):
        return await completion(ctx, req, request, _record(request))

    @app.post("/tokenize")
    async def _tokenize(req: TokenizeCompletionRequest | TokenizeChatRequest):
        return json_response(await ctx.off_loop(tokenize, ctx, req))

    @app.post("/detokenize")
    async def _detokenize(req: DetokenizeRequest):
        return json_response(await ctx.off_loop(detokenize, ctx, req))

    @app.get("/v1/models")
    async def _models():
        card = ModelCard(id=config.served_model_name, max_model_len=bundle.max_model_len)
        return ModelList(data=[card]).model_dump()

    @app.get("/health")
    async def _health():
        return {"status": "ok"}

    @app.get("/ready")
    async def _ready():
        return _readiness(config, generator, app.state.ready_watch)

    @app.get("/metrics")
    async def _metrics():
        body, content_type = ctx.metrics.render()
        return Response(body, media_type=content_type)

    return app
