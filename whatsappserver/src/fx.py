"""Currency conversion to euros from a dated table of rates, so prices in many currencies compare.

The default table is a fixed snapshot (approximate mid-market rates on RATES_DATE); the server's settings can
pass their own `rates` (FX_RATES_EUR) to override or extend it. No network: extraction stays pure.
"""

from __future__ import annotations

from collections.abc import Mapping

RATES_DATE = "2025-06-02"

# EUR value of one unit of each currency, approximate mid-market rates on RATES_DATE.
DEFAULT_EUR_RATES: dict[str, float] = {
    "EUR": 1.0,
    "USD": 0.88,
    "USDT": 0.88,
    "USDC": 0.88,
    "GBP": 1.19,
    "CHF": 1.07,
    "HKD": 0.112,
    "AED": 0.24,
    "SGD": 0.68,
    "JPY": 0.0061,
    "CNY": 0.122,
    "CAD": 0.64,
    "AUD": 0.57,
    "SAR": 0.235,
    "QAR": 0.242,
    "KWD": 2.87,
    "THB": 0.027,
    "MYR": 0.207,
    "INR": 0.0103,
    "SEK": 0.092,
    "NOK": 0.087,
    "DKK": 0.134,
    "PLN": 0.234,
    "CZK": 0.040,
    "TRY": 0.0225,
    "ILS": 0.25,
    "MXN": 0.046,
    "BRL": 0.155,
    "ZAR": 0.049,
    "KRW": 0.00064,
    "TWD": 0.029,
    "NZD": 0.53,
    "RUB": 0.011,
}


def to_eur(
    amount: float | None, currency: str | None, rates: Mapping[str, float] | None = None
) -> float | None:
    """Convert `amount` in `currency` to euros, rounded to the cent; None when either is unknown.

    `rates` entries take precedence over the default table, so settings can override one currency only.
    """
    if amount is None or not currency:
        return None
    code = currency.upper()
    rate = rates.get(code) if rates else None
    if rate is None:
        rate = DEFAULT_EUR_RATES.get(code)
    if rate is None:
        return None
    return round(amount * rate, 2)
