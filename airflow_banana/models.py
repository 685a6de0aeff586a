"""Value objects shared by every lane: what we ask a channel for, and what comes back.

They are plain frozen dataclasses so the pure decision core, the channels and the simulator's
tests can share them without importing any SDK.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "gemini-3-pro-image-preview"
IMAGE_SIZES: tuple[str, ...] = ("1K", "2K", "4K")
MAX_REFERENCE_IMAGES = 14
# Who may see an item's prompt and images: "any" channel, or only Google's own ("official_only":
# Google direct and Vertex AI, for healthcare/finance/government catalogs). See routing.eligibility.
DATA_POLICIES: tuple[str, ...] = ("any", "official_only")
DEFAULT_DATA_POLICY = "any"
OFFICIAL_ONLY = "official_only"
# Grounding tools an item may ask for; "google_search" sends types.Tool(google_search=GoogleSearch()).
GROUNDINGS: tuple[str, ...] = ("google_search",)
# Model tiers (docs/tiers.md): Flash Image ("Nano Banana") is ~3x cheaper and 3-4x faster than Pro
# but draws 1K only; Pro is the one for 2K/4K, exact text and multi-turn edits. A model not listed
# here draws every size (the API answers for it).
FLASH_IMAGE_MODEL = "gemini-2.5-flash-image"
MODEL_IMAGE_SIZES: dict[str, tuple[str, ...]] = {FLASH_IMAGE_MODEL: ("1K",)}
# The models whose tier a channel's ``model`` names. A channel spelling its model otherwise (a
# relay's alias) is taken as serving the item's own model, as before tiers existed.
TIER_MODELS: tuple[str, ...] = (DEFAULT_MODEL, FLASH_IMAGE_MODEL)


def model_id(name: str) -> str:
    """The model a channel's spelling names: ``google/gemini-2.5-flash-image`` (a relay's namespace)
    and ``models/gemini-2.5-flash-image`` are both ``gemini-2.5-flash-image``."""
    return name.rsplit("/", 1)[-1] if name else DEFAULT_MODEL


def sizes_of(model: str) -> tuple[str, ...]:
    """The image sizes ``model`` can draw (Flash Image: 1K only)."""
    return MODEL_IMAGE_SIZES.get(model_id(model), IMAGE_SIZES)


# Output pixel sizes of gemini-3-pro-image-preview (GEMINI_WIRE.md): ratio -> size -> (w, h).
PIXEL_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "1:1": {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)},
    "2:3": {"1K": (848, 1264), "2K": (1696, 2528), "4K": (3392, 5056)},
    "3:2": {"1K": (1264, 848), "2K": (2528, 1696), "4K": (5056, 3392)},
    "3:4": {"1K": (896, 1200), "2K": (1792, 2400), "4K": (3584, 4800)},
    "4:3": {"1K": (1200, 896), "2K": (2400, 1792), "4K": (4800, 3584)},
    "4:5": {"1K": (928, 1152), "2K": (1856, 2304), "4K": (3712, 4608)},
    "5:4": {"1K": (1152, 928), "2K": (2304, 1856), "4K": (4608, 3712)},
    "9:16": {"1K": (768, 1376), "2K": (1536, 2752), "4K": (3072, 5504)},
    "16:9": {"1K": (1376, 768), "2K": (2752, 1536), "4K": (5504, 3072)},
    "21:9": {"1K": (1584, 672), "2K": (3168, 1344), "4K": (6336, 2688)},
}
ASPECT_RATIOS: tuple[str, ...] = tuple(PIXEL_SIZES)
OUTPUT_IMAGE_TOKENS = {"1K": 1120, "2K": 1120, "4K": 2000}
INPUT_IMAGE_TOKENS = 560
# Google's input limit for gemini-3-pro-image-preview ("Maximum input tokens: 65,536", Vertex AI
# model card docs.cloud.google.com/vertex-ai/generative-ai/docs/models/gemini/3-pro-image) and its
# rule of thumb "a token is equivalent to about 4 characters" (ai.google.dev/gemini-api/docs/tokens).
MAX_INPUT_TOKENS = 65_536
CHARS_PER_TOKEN = 4


def estimate_input_tokens(text_chars: int, images: int = 0) -> int:
    """Input tokens of ``text_chars`` characters of prompt plus ``images`` input images, as Google counts
    them roughly; the manifest reader and the simulator use the same estimate, so they agree."""
    return -(-text_chars // CHARS_PER_TOKEN) + images * INPUT_IMAGE_TOKENS


def expected_pixels(image_size: str, aspect_ratio: str) -> tuple[int, int]:
    """Pixel size Google returns for ``image_size`` x ``aspect_ratio``."""
    return PIXEL_SIZES[aspect_ratio][image_size]


@dataclass(frozen=True)
class ReferenceImage:
    """A reference image already loaded (and checked) for sending: bytes plus true MIME type."""

    data: bytes
    mime_type: str
    uri: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class ImageRequest:
    """One image to generate: the same shape for realtime, batch and editing lanes."""

    item_id: str
    prompt: str
    image_size: str = "1K"
    aspect_ratio: str = "1:1"
    model: str = DEFAULT_MODEL
    reference_images: tuple[ReferenceImage, ...] = ()
    include_thoughts: bool = False
    # Not part of what is drawn but of who may draw it: never sent, it narrows the channels.
    data_policy: str = DEFAULT_DATA_POLICY
    grounding: str | None = None  # "google_search": the request carries the Search tool
    # Other models that may draw it (a cheaper tier); like the data policy they narrow or widen
    # who may draw it, so they are not part of the fingerprint (metadata records the maker).
    fallback_models: tuple[str, ...] = ()

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The models that may draw this image, the primary first."""
        return (self.model, *self.fallback_models)

    @property
    def official_only(self) -> bool:
        return self.data_policy == OFFICIAL_ONLY

    def fingerprint(self) -> str:
        """Stable hash of everything that changes the image (not the channel, not the item id).

        Two requests with one fingerprint are the same purchase: storage skips it, the ledger
        proves it was paid once. Grounding changes the image (it is drawn from search results),
        so it is part of the hash when set; the data policy changes only the channels, not it.
        """
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "image_size": self.image_size,
            "aspect_ratio": self.aspect_ratio,
            "model": self.model,
            "reference_images": [r.sha256 for r in self.reference_images],
        }
        if self.grounding:
            body["grounding"] = self.grounding
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Usage:
    """Token counts as reported by the channel (zeros where it reports none)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    thoughts_tokens: int = 0
    total_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "image_tokens": self.image_tokens,
            "thoughts_tokens": self.thoughts_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class GenerationResult:
    """The normalised outcome of one successful attempt on any channel.

    ``mime_type`` is sniffed from the bytes; ``declared_mime_type`` is what the channel claimed.
    ``thought_signatures`` keeps the raw signature bytes of the model turn (editing needs them);
    ``content`` is the model turn as exchanged (JSON-able dict), for multi-turn history.
    """

    image: bytes
    mime_type: str
    declared_mime_type: str
    channel: str
    usage: Usage = Usage()
    finish_reason: str = "STOP"
    cost_usd: float = 0.0
    text: str = ""
    thought_signatures: tuple[bytes, ...] = ()
    content: dict[str, Any] | None = field(default=None, compare=False)
    latency_s: float = 0.0
    # True when ``cost_usd`` is what the channel says it billed (a relay's ``usage.cost``);
    # False when it is the connection's configured price.
    cost_reported: bool = False
    # What a grounded request was grounded in (``grounding_summary``): search queries, sources.
    grounding: dict[str, Any] | None = field(default=None, compare=False)
    # The model the channel asked to draw it (the channel's tier; metadata records it).
    model: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()
