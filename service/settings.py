"""Service settings: one pydantic-settings object, env prefix ``ASSISTANT_``.

Every field is documented here and in the README. The learning job reads the
same object (``learning`` may import ``service.settings``) so there is one
place where an operator looks.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.passwords import password_problem

logger = logging.getLogger(__name__)

DEFAULT_SECRET = "dev-secret-change-me-dev-secret-change-me"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class SettingsError(RuntimeError):
    """A setting is invalid; the message says how to fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASSISTANT_", env_file=None, extra="ignore")

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="Directory for the SQLite database, the converted model and the adapter store.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/assistant.db. PostgreSQL: postgresql+psycopg://user:pass@host/db")
    db_pool_size: int = Field(10, ge=1, description="Database connections kept open per process. No request holds one while its reply generates.")
    db_max_overflow: int = Field(20, ge=0, description="Extra connections opened under load beyond the pool size.")
    db_pool_timeout: float = Field(30.0, gt=0, description="Seconds a request waits for a free database connection before it fails (503).")
    model: str = Field(EMBEDDED_MODEL, description="Base model: the embedded SmolLM2-135M-Instruct, a local directory, or a Hugging Face id already in the local cache.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Serving dtype. auto: at start the batched engine times float32 and bfloat16 on this machine's CPU/GPU "
        "and keeps the faster one whose greedy tokens agree with float32 (reported in /healthz and the logs). Training is float32.")
    int8_decode_rows: int = Field(-1, ge=-1, le=64, description="Decode steps of at most this many rows multiply int8 copies of the "
                                  "weights (weight-only, one scale per output channel; 16-bit serving only): one stream reads half the "
                                  "bytes per token. -1: measured at start (the widest of 1, 2, 4, 8 rows where int8 is at least 1.1x "
                                  "faster and one row's greedy tokens agree with float32's; /healthz shows engine.int8_decode). 0: off.")
    compile_decode: bool = Field(True, description="One-row decode steps (one stream) run a step compiled by torch.compile "
                                 "(inductor fuses the small ops between the matmuls; 16-bit serving only, the float32 reference stays "
                                 "eager). The server compiles it in the background, in the engine's idle time, and serves eagerly until "
                                 "it is ready: 5-10 minutes at the first start on 2 cores, ~20 s at a restart (inductor's cache: "
                                 "<data_dir>/compile-cache). A pass the compiled graph does not fit runs eagerly. /healthz shows "
                                 "engine.compiled_decode. 0: always eager.")
    safety_stage: bool = Field(True, description="Serve and train on the base with the shared safety stage merged in "
                               "(`assistant safety train` makes it, once per base model; the learning worker makes it at its first "
                               "start). Off: the plain base.")
    safety_train_at_start: bool = Field(True, description="The learning worker trains the safety stage at its first start when this "
                                        "base has none (about 10 minutes in the background; the server swaps it in when ready).")
    serving_filter: str = Field("none", description="Harm judge of the serving filter (service/content_filter.py): a reply it "
                                "flags is cut before the flagged words and ended with a redirect (finish reason content_filter). "
                                "One of service.judges' names (insults, better-profanity, keywords, ...); none = off, the default: "
                                "with insults it cut 7% of ordinary and 19% of edgy-but-benign replies (kill, murder, fat, pot; "
                                "docs/results/2026-12-05-safety-stage-v4).")
    best_of_n: int = Field(4, ge=1, le=16, description="Personal best-of-n (service/best_of_n.py): candidates sampled per choice for a "
                           "user served by an adapter with a stored reward, chosen by that reward (the user's lower bound, plus the "
                           "population's times ASSISTANT_BEST_OF_N_POPULATION_WEIGHT) after the harm judge drops flagged ones; used only while the engine has that many idle "
                           "rows (one candidate under load, re-checked every block) and for single replies (not alternatives to rank). "
                           "1 = off (the first token then comes ~10x sooner at one user; docs/results/2026-12-05-best-of-n).")
    best_of_n_block: int = Field(16, ge=0, le=4096, description="Tokens per best-of-n choice: the reply streams one chosen block at a "
                                 "time. 0 = choose once among whole replies (nothing shows until the chosen reply is done).")
    best_of_n_first_block: int = Field(1, ge=0, le=4096, description="Tokens of best-of-n's first choice, when it should differ "
                                       "from ASSISTANT_BEST_OF_N_BLOCK: the first token waits for n candidates of this many tokens. "
                                       "0 = the same as the block. Default 1: the first token comes about as soon as without "
                                       "best-of-n (1.45x instead of 13.9x at one user), at no measured cost in win rate "
                                       "(-0.9 points, -3.9 to +2.1; docs/results/2026-12-05-best-of-n).")
    best_of_n_population_weight: float = Field(0.0, ge=0.0, le=4.0, description="Weight of the population's reward in "
                                               "best-of-n's choice, beside the user's lower bound (whose weights already "
                                               "shrink toward the population's, their prior). 0 (the default) = the user's "
                                               "reward alone: +4.5 points (+2.0 to +7.1) for the five tuning users over 1, "
                                               "the sum served before 2026-12-07 (docs/results/2026-12-07-served-population-weight).")
    best_of_n_judge: str = Field("insults", description="Harm judge that drops best-of-n candidates (service.judges' names); none = keep all.")
    device: str = Field("cpu", description="torch device for serving and training (cpu, cuda, cuda:0).")

    # --- web ---------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address of `assistant serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `assistant serve`.")
    allowed_origins: str = Field("", description="Comma-separated origins allowed for cookies on the WebSocket and for CORS; default the server's own origin.")
    allowed_hosts: str = Field("", description="Comma-separated extra Host names the server answers (an internal name behind a proxy); "
                               "the allowed origins' hosts and loopback always are, any other Host gets 400.")
    secret_key: str = Field(DEFAULT_SECRET, description="Signs session tokens. Must be set (32+ chars) unless dev_mode.")
    dev_mode: bool = Field(False, description="Allows the default secret key; `make run` turns it on for local use.")
    admin_password: str | None = Field(None, description="Creates or updates the operator account `admin` at start.")
    proxy_key: str | None = Field(None, description="Trusted-proxy mode (Open WebUI, LibreChat in front): a front end that sends this "
                                  "key as its API key and the user headers Open WebUI forwards (X-OpenWebUI-User-Id, with "
                                  "ENABLE_FORWARD_USER_INFO_HEADERS=true) acts as that user, each with their own adapter and "
                                  "limits. 32+ characters; unset = off.")
    token_ttl_minutes: int = Field(60 * 24 * 7, ge=1, description="Lifetime of access tokens and session cookies.")
    sign_in_failures_per_account: int = Field(5, ge=0, description="Failed sign-ins per account in the window before 429 (0 = no limit).")
    sign_in_failures_per_address: int = Field(20, ge=0, description="Failed sign-ins per client address in the window before 429 (0 = no limit).")
    sign_in_window_s: float = Field(300.0, gt=0, description="Window of the sign-in failure limits, seconds.")
    proxy_jwt_secret: str | None = Field(None, description="Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET: with it the trusted "
                                         "proxy's user is read only from the signed X-OpenWebUI-User-Jwt header (HS256, issuer "
                                         "open-webui, unexpired), never from the plain X-OpenWebUI-User-* headers, so the proxy key "
                                         "alone cannot act as any user. 32+ characters; unset = the plain headers.")
    proxy_users_per_hour: int = Field(200, ge=0, description="New users the trusted proxy may create per hour (they are approved "
                                      "on creation); past it a new user's request answers 401 until the hour's oldest ages out. 0 = no limit.")
    openwebui_url: str | None = Field(None, description="Open WebUI's base URL (e.g. http://localhost:8080): with "
                                      "ASSISTANT_OPENWEBUI_TOKEN, the learning worker imports its users' thumbs every "
                                      "ASSISTANT_OPENWEBUI_SYNC_S seconds and deletes the ones deleted there.")
    openwebui_token: str | None = Field(None, description="An Open WebUI admin's API key (Settings > Account > API keys), "
                                        "to read its feedback export.")
    openwebui_sync_s: float = Field(60.0, ge=5, description="Seconds between two reads of Open WebUI's ratings.")
    proxy_addresses: str = Field("", description="Comma-separated addresses or networks (CIDR) the trusted-proxy key is accepted "
                                 "from (the front end's host); empty: from anywhere. The address is the one ASSISTANT_TRUSTED_PROXIES "
                                 "resolves.")
    metrics_token: str | None = Field(None, min_length=16, description="When set, /metrics answers only `Authorization: Bearer <this>` (401 "
                                      "otherwise) and /healthz shows others only its status. Unset: both public (bind to a private "
                                      "address or filter them at the proxy).")
    trusted_proxies: str = Field("127.0.0.1,::1", description="Comma-separated addresses or networks (CIDR) of reverse proxies "
                                 "whose X-Forwarded-For is believed: a request from one of them is keyed, for the sign-in and "
                                 "registration limits, on the nearest address in that header that is not a trusted proxy. "
                                 "Any other peer is keyed on its own address (a header it sends is ignored).")
    cookie_secure: bool | None = Field(None, description="Send the session cookie only over HTTPS (and HSTS). Default: on outside dev mode; "
                                       "set 0 only for a plain-HTTP deployment you reach on a private network.")
    registration: Literal["open", "approval", "closed"] | None = Field(
        None, description="Who may create an account: open; approval (new accounts sign in but neither chat nor count "
        "for training until an operator approves them); closed (POST /api/auth/register answers 403; operators create "
        "users). Default: approval, or open in dev mode.")
    registrations_per_hour: int | None = Field(None, ge=0, description="Accounts one client address may register per hour "
                                               "(429 above; 0 = no limit). Default: 10, or no limit in dev mode.")

    # --- limits ------------------------------------------------------------
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Largest accepted HTTP request body (413 above).")
    max_message_chars: int = Field(8000, ge=1, description="Longest user message (422 above).")
    max_alternatives: int = Field(4, ge=1, le=8, description="Most alternative replies per user turn.")
    max_instructions_chars: int = Field(2000, ge=0, le=32000, description="Longest custom instructions (a user's own system "
                                        "prompt, applied to their new conversations; 422 above; 0 turns the feature off).")
    default_max_new_tokens: int = Field(256, ge=1, description="Reply length when the client does not say.")
    max_new_tokens_limit: int = Field(1024, ge=1, description="Largest max_new_tokens a client may ask for (422 above).")
    max_input_tokens: int = Field(2048, ge=64, description="Prompt budget: older turns are dropped to fit.")
    max_messages: int = Field(256, ge=2, description="Most messages in one /v1 request (413 above); also the most turns "
                              "of a conversation's history read for one reply (the newest are kept).")
    prompt_workers: int = Field(4, ge=1, description="Threads that store turns and render prompts (a pool of their own, so long "
                                "prompts never take the threads other routes need).")
    max_concurrent_per_user: int = Field(4, ge=1, description="Generations one user may have running at once (429 above).")
    max_background_per_user: int = Field(2, ge=1, description="A front end's background calls (titles, tags, follow-ups of a "
                                         "trusted proxy) one user may have running at once: slots of their own, beside "
                                         "ASSISTANT_MAX_CONCURRENT_PER_USER, so they never refuse the user's replies.")
    ws_handshakes_per_minute: int | None = Field(None, ge=0, description="WebSocket handshakes one client address may open per minute "
                                                 "(closed with 1008 above; 0 = no limit). Default: 120, or no limit in dev mode.")
    ws_per_user: int = Field(8, ge=1, description="Open chat WebSockets one user may hold (the next one is told too_many and closed).")
    ws_idle_timeout_s: float = Field(900.0, gt=0, description="Seconds a chat WebSocket may stay silent with nothing generating before the server closes it.")
    requests_per_minute: int | None = Field(None, ge=0, description="Chat turns, regenerations and /v1 completions one user may start per minute "
                                            "(429 / a rate_limited frame above; 0 = no limit). Default: 60, or no limit in dev mode.")
    max_messages_per_user: int = Field(100_000, ge=1, description="Stored messages one user may hold (a new turn is refused with 413 / quota above; "
                                       "deleting conversations frees room).")
    max_stored_chars_per_user: int = Field(200_000_000, ge=1, description="Characters of stored messages one user may hold (a new turn "
                                           "is refused with 413 / quota above; checked at most once a minute per user, so it may be "
                                           "passed by one minute's turns).")
    heavy_reads_per_minute: int | None = Field(None, ge=0, description="Searches and exports one user may start per minute (429 above; "
                                               "0 = no limit). Default: 30, or no limit in dev mode.")
    heavy_read_threads: int = Field(2, ge=1, le=64, description="Threads that run searches and exports (a pool of their own, so "
                                    "they never hold the threads and database connections other routes need).")
    search_timeout_s: float = Field(5.0, ge=0, description="A conversation search stops after this many seconds (503 with a "
                                    "clear message; 0 = no deadline).")
    metrics_refresh_s: float = Field(15.0, ge=0, description="/metrics reads the training tables at most once per this many "
                                     "seconds (a flood of scrapes costs one set of queries; 0 = every scrape).")
    password_threads: int = Field(2, ge=1, le=64, description="Threads that hash passwords for sign-in and registration (argon2 "
                                  "is slow on purpose: a flood of sign-ins waits for these, not for every route thread).")
    default_temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature when the client does not say.")
    default_top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling when the client does not say.")

    # --- engine ------------------------------------------------------------
    engine: Literal["batched", "naive", "vllm"] = Field("batched", description="Generation engine: continuous batching with per-row "
                                                        "adapters, one request at a time, or a vLLM server (ASSISTANT_VLLM_URL).")
    vllm_url: str | None = Field(None, description="ASSISTANT_ENGINE=vllm: the vLLM server's base URL (its OpenAI-compatible API), "
                                 "started on the served base with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                                 "reading the same adapter store (`assistant vllm-command` prints the command).")
    vllm_model: str | None = Field(None, description="The base model's name on the vLLM server (default: the one it serves).")
    vllm_api_key: str | None = Field(None, description="The vLLM server's --api-key, if it was started with one.")
    max_batch_size: int = Field(16, ge=1, description="Most requests in one forward pass.")
    max_queue: int = Field(64, ge=1, description="Waiting requests before new ones get 429 / an error frame.")
    adapter_cache_size: int = Field(32, ge=1, description="Adapters kept resident in the engine (LRU; in-use ones are pinned).")
    prefill_chunk_tokens: int = Field(256, ge=16, description="Prompt tokens prefilled per engine step: a long prompt enters in chunks "
                                      "of this size, so running replies keep streaming while it arrives.")
    prefix_cache_mb: int = Field(256, ge=0, description="Memory for reusing the KV cache of a conversation's earlier turns (per user "
                                 "and adapter, LRU). 0 turns prefix reuse off.")
    server_threads: int | None = Field(None, ge=1, description="torch threads of the server process (default: every core).")
    worker_threads: int | None = Field(None, ge=1, description="torch threads of the learning worker (default: every core).")
    worker_nice: int = Field(10, ge=0, le=19, description="CPU priority the worker lowers itself by (Unix nice): while users chat, "
                             "the server's generation comes first and training takes the idle time; 0 = equal priority.")

    # --- learning (the worker reads these) ----------------------------------
    schedule_cron: str = Field("0 2 * * *", description="Nightly training schedule (cron, local time); editable from the admin API.")
    schedule_enabled: bool = Field(True, description="Whether the nightly schedule fires.")
    exploration_share: float = Field(0.1, ge=0.0, le=1.0, description="Chance that one alternative comes from another policy (0 turns it off).")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        problems = []
        if not self.dev_mode and self.secret_key == DEFAULT_SECRET:
            problems.append(
                "ASSISTANT_SECRET_KEY is the built-in default; set it to a random string "
                "(python -c 'import secrets; print(secrets.token_urlsafe(48))') or set ASSISTANT_DEV_MODE=1 for local use"
            )
        elif not self.dev_mode and len(self.secret_key) < 32:
            problems.append("ASSISTANT_SECRET_KEY must be at least 32 characters outside dev mode")
        if self.proxy_key is not None and len(self.proxy_key) < 32:
            problems.append("ASSISTANT_PROXY_KEY must be at least 32 characters (python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        if self.proxy_jwt_secret is not None and len(self.proxy_jwt_secret) < 32:
            problems.append("ASSISTANT_PROXY_JWT_SECRET must be at least 32 characters (Open WebUI signs with it as HS256)")
        if self.dev_mode and self.host not in LOOPBACK_HOSTS:
            problems.append(f"ASSISTANT_DEV_MODE is for local use only: bind to 127.0.0.1 (ASSISTANT_HOST={self.host}), "
                            "or turn dev mode off and set ASSISTANT_SECRET_KEY")
        if self.admin_password is not None and not self.dev_mode and password_problem(self.admin_password, "admin"):
            problems.append(f"ASSISTANT_ADMIN_PASSWORD: {password_problem(self.admin_password, 'admin')}")
        if self.engine == "vllm" and not self.vllm_url:
            problems.append("ASSISTANT_ENGINE=vllm needs ASSISTANT_VLLM_URL (e.g. http://127.0.0.1:8001); "
                            "`assistant vllm-command` prints how to start vLLM for this install")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            problems.append("ASSISTANT_DEFAULT_MAX_NEW_TOKENS must not exceed ASSISTANT_MAX_NEW_TOKENS_LIMIT")
        if problems:
            raise SettingsError("invalid settings:\n  - " + "\n  - ".join(problems))
        return self

    # --- derived -------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'assistant.db').resolve()}"

    @property
    def host_allowlist(self) -> list[str]:
        """Host headers the server answers (400 otherwise; DNS rebinding): the allowed origins'
        hosts, loopback and ``allowed_hosts``."""
        hosts = {urlsplit(o).hostname for o in self.origins} | set(LOOPBACK_HOSTS)
        hosts |= {h.strip() for h in self.allowed_hosts.split(",")}
        return sorted(h for h in hosts if h)

    # Settings left unset (None) take a local-use value in dev mode and a deployment value otherwise.
    def _by_mode(self, value, dev, deployed):
        return value if value is not None else (dev if self.dev_mode else deployed)

    @property
    def secure_cookies(self) -> bool:
        return self._by_mode(self.cookie_secure, False, True)

    @property
    def registration_mode(self) -> str:
        return self._by_mode(self.registration, "open", "approval")

    @property
    def handshake_limit(self) -> int:
        return self._by_mode(self.ws_handshakes_per_minute, 0, 120)

    @property
    def request_limit(self) -> int:
        return self._by_mode(self.requests_per_minute, 0, 60)

    @property
    def heavy_read_limit(self) -> int:
        return self._by_mode(self.heavy_reads_per_minute, 0, 30)

    @property
    def registration_limit(self) -> int:
        return self._by_mode(self.registrations_per_hour, 0, 10)

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def origins(self) -> list[str]:
        if self.allowed_origins.strip():
            return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]
        hosts = {self.host, "127.0.0.1", "localhost"} if self.host in ("127.0.0.1", "localhost", "0.0.0.0") else {self.host}
        return sorted(f"http://{h}:{self.port}" for h in hosts if h != "0.0.0.0")


@lru_cache
def get_settings() -> Settings:
    return Settings()
