"""The size limits every manifest input is checked against before any money is spent, in one place.

Without them one oversized line could cost a 50 MB string in memory, a request Google refuses
only after the run has started, or an hour of a test simulator's time (issue 16). Each default
below names its source; every one can be overridden per process with an environment variable
(``BANANA_MAX_INPUT_TOKENS=32768``), read when a manifest is read, so the same value applies to
the realtime, batch and plan operators and the CLI alike. Pass a :class:`ManifestLimits` to
``read_manifest`` / ``prepare_manifest`` to override in code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.models import CHARS_PER_TOKEN, INPUT_IMAGE_TOKENS, MAX_INPUT_TOKENS

ENV_PREFIX = "BANANA_"
# Room for the JSON around the parts of one generateContent request: contents, generationConfig.
REQUEST_ENVELOPE_BYTES = 1024
PART_ENVELOPE_BYTES = 128


@dataclass(frozen=True)
class ManifestLimits:
    """Upper bounds for one manifest item and one manifest line (all counts, never fractions).

    * ``max_input_tokens`` -- Google's input limit for gemini-3-pro-image-preview, 65,536 tokens
      (Vertex AI model card). A prompt is counted at ~4 characters per token and each reference
      image at 560 tokens (Google's token docs), so a prompt alone may have up to 262,144 characters.
    * ``max_request_bytes`` -- the Gemini API's limit for one request with inline data, 20 MB
      (ai.google.dev image-understanding docs: over 20 MB in total, files and prompt included, needs
      the File API): prompt plus base64 reference images (4/3 of their bytes) plus the JSON around.
    * ``max_reference_bytes`` -- one inline image, 7 MB (the model card's "maximum file size per file
      for inline data"); 7 MiB here, as before.
    * ``max_line_bytes`` -- one JSONL line or one item of a JSON document, 4 MiB: the longest prompt
      fully escaped (6 bytes per character) plus metadata still fits; a longer line is rejected
      unread, so memory never holds more than this much of it.
    * ``max_metadata_bytes`` -- an item's merged ``metadata`` as compact JSON, 64 KiB (our choice:
      it is copied into every item's metadata file and report; it is not sent to Google).
    * ``max_metadata_depth`` -- how deeply ``metadata`` may nest, 32 levels (our choice: deeper
      values hit Python's recursion limit in ``json`` and every later serialisation).
    """

    max_input_tokens: int = MAX_INPUT_TOKENS
    max_request_bytes: int = 20_000_000
    max_reference_bytes: int = 7 * 1024 * 1024
    max_line_bytes: int = 4 * 1024 * 1024
    max_metadata_bytes: int = 64 * 1024
    max_metadata_depth: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"manifest limit {f.name} must be a positive integer, got {value!r}")

    def max_prompt_chars(self, images: int = 0) -> int:
        """The longest prompt that fits in the input-token limit beside ``images`` reference images."""
        return max(0, (self.max_input_tokens - images * INPUT_IMAGE_TOKENS) * CHARS_PER_TOKEN)

    def request_bytes(self, prompt_bytes: int, image_bytes: int, images: int) -> int:
        """The size of the generateContent request that carries them inline (base64 images)."""
        encoded = 4 * (-(-image_bytes // 3))
        return REQUEST_ENVELOPE_BYTES + prompt_bytes + encoded + (images + 1) * PART_ENVELOPE_BYTES


DEFAULT_LIMITS = ManifestLimits()


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def limits_from_env(environ: Mapping[str, str] | None = None) -> ManifestLimits:
    """The defaults with every ``BANANA_<FIELD>`` environment variable applied."""
    env = os.environ if environ is None else environ
    overrides: dict[str, int] = {}
    for f in fields(ManifestLimits):
        raw = env.get(env_name(f.name))
        if raw is None or not raw.strip():
            continue
        try:
            overrides[f.name] = int(raw.strip().replace("_", ""))
        except ValueError as err:
            raise ConfigurationError(
                f"environment variable {env_name(f.name)}={raw!r} is not an integer; "
                "nothing was read or spent"
            ) from err
    return replace(DEFAULT_LIMITS, **overrides) if overrides else DEFAULT_LIMITS
