"""Error bodies exactly as Google (and OpenRouter-style relays) shape them.

The SDK turns any non-200 into ``ClientError``/``ServerError`` whose ``.details`` is the whole
parsed body, so the channels' error classification depends on these shapes being faithful.
"""

from __future__ import annotations

from typing import Any

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
OVERLOADED = "The model is overloaded. Please try again later."
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
VERTEX_QUOTA_MESSAGE = "Resource exhausted. Please try again later."


class RequestError(Exception):
    """A request the simulated API refuses; becomes the error envelope of ``code``."""

    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return google_error(self.code, self.message, self.details)


def google_error(code: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def format_delay(seconds: float) -> str:
    """Google's Duration spelling: "26s", "0.734s"."""
    if abs(seconds - round(seconds)) < 1e-9:
        return f"{round(seconds)}s"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def quota_error(
    *,
    retry_delay_s: float,
    quota_id: str,
    quota_metric: str,
    quota_value: int | None,
    model: str,
    vertex: bool = False,
) -> dict[str, Any]:
    violation: dict[str, Any] = {"quotaMetric": quota_metric, "quotaId": quota_id}
    dims = {"model": model, "location": "global"}
    violation["quotaDimensions"] = dims
    if quota_value is not None:
        violation["quotaValue"] = str(quota_value)
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format_delay(retry_delay_s)},
    ]
    if vertex:
        message = VERTEX_QUOTA_MESSAGE
    else:
        message = (
            f"{QUOTA_MESSAGE}\n* Quota exceeded for metric: {quota_metric}, limit: {quota_value or 0}, "
            f"model: {model}\nPlease retry in {format_delay(retry_delay_s)}."
        )
    return google_error(429, message, details)


def fixed_status_error(status: int, *, model: str, version: str) -> dict[str, Any]:
    if status == 400:
        return google_error(
            400,
            "API key not valid. Please pass a valid API key.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": "API key not valid. Please pass a valid API key.",
                },
            ],
        )
    if status == 401:
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
            "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
    if status == 403:
        return google_error(
            403,
            "Permission denied: Consumer has been suspended.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "CONSUMER_SUSPENDED",
                    "domain": "googleapis.com",
                }
            ],
        )
    if status == 404:
        return model_not_found(model, version)
    if status == 503:
        return google_error(503, OVERLOADED)
    return google_error(
        500,
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    )


def model_not_found(model: str, version: str) -> dict[str, Any]:
    return google_error(
        404,
        f"models/{model} is not found for API version {version}, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


def openai_error(google_body: dict[str, Any], *, retry_after: float | None = None) -> dict[str, Any]:
    """The OpenRouter-style error for the same failure: Google's body under ``metadata.raw``."""
    err = google_body.get("error", {})
    metadata: dict[str, Any] = {"provider_name": "Google", "raw": google_body}
    if retry_after is not None:
        metadata["retry_after_seconds"] = retry_after
    return {"error": {"code": err.get("code", 500), "message": err.get("message", ""), "metadata": metadata}}
