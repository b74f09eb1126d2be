"""One request to an OpenAI-compatible ``/chat/completions`` endpoint (stdlib only).

Shared by the LLM judge and the Crescendo endpoint attacker; each adds its own retries.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any


def chat_completion(base_url: str, body: dict[str, Any], api_key_env: str, timeout_s: float) -> str:
    """POST ``body`` to ``base_url/chat/completions`` and return the first choice's message content."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        data = json.loads(resp.read().decode("utf-8"))
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise ValueError("the endpoint's message content is not a string")
    return content
