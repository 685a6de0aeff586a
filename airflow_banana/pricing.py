"""List prices shipped as data, and the cost of an attempt.

Prices are USD per generated image by resolution, checked on ``PRICES_CHECKED_ON``
(../shared/PRICING.md). Any connection may override them with ``extra.prices``.
Google bills nothing for failed calls; a relay may, so that is a per-channel setting.
"""

from __future__ import annotations

from collections.abc import Mapping

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.models import DEFAULT_MODEL, FLASH_IMAGE_MODEL, IMAGE_SIZES, model_id, sizes_of

PRICES_CHECKED_ON = "2026-02-15"

# lane/protocol -> image size -> USD per image, for gemini-3-pro-image-preview.
LIST_PRICES: dict[str, dict[str, float]] = {
    "gemini": {"1K": 0.134, "2K": 0.134, "4K": 0.24},
    "vertex": {"1K": 0.134, "2K": 0.134, "4K": 0.24},
    "batch": {"1K": 0.067, "2K": 0.067, "4K": 0.12},
    "openai": {"1K": 0.05, "2K": 0.05, "4K": 0.05},  # flat-price relay; OpenRouter: set prices
}
# Other model tiers: model -> lane -> size -> USD. Flash Image is $0.039 at 1K (1290 tokens at
# $30/M), its only size; Batch is Google's 50 %. A relay's Flash price is its own: set
# ``prices`` on the model (docs/connections.md); until then Google's list price stands in.
MODEL_LIST_PRICES: dict[str, dict[str, dict[str, float]]] = {
    FLASH_IMAGE_MODEL: {
        "gemini": {"1K": 0.039},
        "vertex": {"1K": 0.039},
        "batch": {"1K": 0.0195},
        "openai": {"1K": 0.039},
    },
}
# The price a user would pay going to Google directly: the baseline for "savings".
GOOGLE_DIRECT = LIST_PRICES["gemini"]


def price_table(
    lane: str, overrides: Mapping[str, object] | None = None, *, model: str = DEFAULT_MODEL
) -> dict[str, float]:
    """The per-size price table for ``lane`` and ``model`` with a connection's ``prices`` applied.

    A model that draws only some sizes (Flash Image: 1K) has prices for those sizes only.
    """
    tiers = MODEL_LIST_PRICES.get(model_id(model))
    if tiers is None:
        table = dict(LIST_PRICES.get(lane, LIST_PRICES["gemini"]))
    else:
        table = dict(tiers.get(lane, tiers["gemini"]))
    sizes = sizes_of(model)
    for size, value in (overrides or {}).items():
        if size not in IMAGE_SIZES:
            raise ConfigurationError(f"prices: unknown image size {size!r}; use one of {IMAGE_SIZES}")
        if size not in sizes:
            raise ConfigurationError(f"prices: {model_id(model)} draws {'/'.join(sizes)} only, not {size}")
        try:
            price = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise ConfigurationError(f"prices[{size!r}] must be a number, got {value!r}") from err
        if price < 0:
            raise ConfigurationError(f"prices[{size!r}] must not be negative, got {price}")
        table[size] = price
    return table


def attempt_cost(
    table: Mapping[str, float], image_size: str, *, succeeded: bool, billed_on_failure: bool
) -> float:
    """What one attempt costs: the image price on success, on failure only where the channel bills it."""
    if succeeded or billed_on_failure:
        return table[image_size]
    return 0.0


def savings_vs_direct(spent: float, sizes: Mapping[str, int]) -> float:
    """USD saved against generating the same images (count per size) at Google's direct list price."""
    direct = sum(GOOGLE_DIRECT[size] * n for size, n in sizes.items())
    return direct - spent
