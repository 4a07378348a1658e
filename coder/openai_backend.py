"""The `openai` backend: any OpenAI-compatible endpoint (`vllm serve`, `transformers serve`, a provider).

Requests run concurrently (bounded by `concurrency`); each HTTP attempt is bounded by `timeout_s`; connection
errors, timeouts, 408/409/429 and 5xx are retried `retries` times with the client's exponential backoff. A
request that still fails becomes a `BackendError` in its place. Once one request of a call finds the server
unreachable or hung (no answer within `timeout_s` on every attempt), the requests of that call not yet sent fail
at once instead of each waiting out its own retries, so a hung server costs a call one request's worst case, not
one per wave of `concurrency` requests (the next call tries the server again). A slow server that answers is
waited for, up to `call_timeout_s` for the whole call: then what is not sent is not sent, what is in flight is no
longer waited for (its thread ends with its own timeout), and both come back as errors.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

from delegate.coder.config import CoderConfig
from delegate.coder.core import BackendError, Conversation


class OpenAIBackend:
    def __init__(self, config: CoderConfig) -> None:
        import openai

        self.config = config
        self.openai = openai
        # Local servers take any key; a provider's comes from the named environment variable.
        api_key = os.environ.get(config.api_key_env) or "EMPTY"
        self.client = openai.OpenAI(base_url=config.base_url, api_key=api_key, timeout=config.timeout_s,
                                    max_retries=config.retries)
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="coder-http")

    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        unreachable: list[str] = []  # set by the first request that gives up on a dead or hung server
        lock = threading.Lock()
        limit = self.config.call_timeout_s
        deadline = time.monotonic() + limit
        late = f"the call's deadline of {limit:g} s passed"

        def one(conversation: Conversation) -> str | BackendError:
            with lock:
                if unreachable:
                    return BackendError(f"not sent: {unreachable[0]}")
            if time.monotonic() > deadline:
                return BackendError(f"not sent: {late}")
            reply = self._one(conversation)
            if isinstance(reply, BackendError) and str(reply).startswith(("cannot reach", "timed out")):
                with lock:
                    unreachable[:] = unreachable or [str(reply)]
            return reply

        futures = [self.pool.submit(one, conversation) for conversation in conversations]
        done, _ = wait(futures, timeout=limit)
        return [future.result() if future in done
                else BackendError(f"not sent: {late}") if future.cancel()  # still queued: never sent
                else BackendError(f"no answer: {late}") for future in futures]

    def _one(self, conversation: Conversation) -> str | BackendError:
        cfg = self.config
        try:
            response = self.client.chat.completions.create(
                model=cfg.model, messages=conversation, temperature=cfg.temperature, top_p=cfg.top_p,
                max_tokens=cfg.max_new_tokens)
            return response.choices[0].message.content or ""
        except self.openai.APITimeoutError:
            return BackendError(f"timed out after {cfg.timeout_s:g} s ({cfg.retries + 1} attempts)")
        except self.openai.APIConnectionError as exc:
            return BackendError(f"cannot reach {self.client.base_url} ({cfg.retries + 1} attempts): {exc}")
        except self.openai.APIStatusError as exc:
            return BackendError(f"HTTP {exc.status_code} from {self.client.base_url}: {_detail(exc)}")
        except (self.openai.OpenAIError, IndexError, AttributeError, TypeError) as exc:  # malformed answers too
            return BackendError(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def _detail(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body.get("error") or body)[:300]
    return str(exc)[:300]
