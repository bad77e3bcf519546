"""A fake OpenAI-compatible LLM provider on a loopback port, for the AI gateway's tests.

It answers every chat completion with the same JSON content, a verdict as MLflow's judges
expect one (``{"result": "yes", "rationale": "echo: <the last message's first words>"}``),
and keeps what it was sent (path, API key, body) for the test to check.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mlflow.entities import GatewayEndpointModelConfig, GatewayModelLinkageType


class FakeLlm:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                outer.requests.append(
                    {"path": self.path, "key": self.headers.get("Authorization"), "body": body}
                )
                last = str(body.get("messages", [{}])[-1].get("content", ""))
                verdict = {"result": "yes", "rationale": f"echo: {last[:20]}"}
                answer = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": json.dumps(verdict)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def gateway_endpoint(
    store: Any, api_base: str, api_key: str = "sk-fake-key", name: str | None = None
) -> str:
    """A secret, a model definition and an endpoint calling ``api_base``: the endpoint's name."""
    name = name or f"chat-{uuid.uuid4().hex[:8]}"
    secret = store.create_gateway_secret(
        secret_name=name,
        secret_value={"api_key": api_key},
        provider="openai",
        auth_config={"api_base": api_base},
    )
    model = store.create_gateway_model_definition(
        name=name, secret_id=secret.secret_id, provider="openai", model_name="gpt-fake"
    )
    store.create_gateway_endpoint(
        name=name,
        model_configs=[
            GatewayEndpointModelConfig(
                model_definition_id=model.model_definition_id,
                linkage_type=GatewayModelLinkageType.PRIMARY,
                weight=1.0,
            )
        ],
    )
    return name
