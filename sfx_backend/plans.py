"""The plan catalogue: what each plan allows and costs. The one place these numbers live.

`catalogue(config)` builds it from the app's settings (the trial allowance from
`TRIAL_GENERATION_LIMIT`, Stripe price ids from `STRIPE_PRICE_*`); everything that needs a limit
(quota, rate limits, the jobs-at-once cap, /usage/limits, /subscription/plans, revenue figures)
reads it from here. `PLAN_OVERRIDES` in the settings ({plan: {field: value}}) adjusts single numbers
without code changes (tests use it; operators may too).

Overage: `overage_allowed` and `overage_price_cents` are the plan's terms. What applies to a given
period is the quota ledger's allowance (services/quota.py, from the subscription row); /usage/current
and /usage/limits report that effective value, never a promise the ledger does not keep.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping

TRIAL = "trial"
PAID_PLANS = ("starter", "pro", "studio")
PLAN_NAMES = (TRIAL, *PAID_PLANS)


@dataclass(frozen=True)
class Plan:
    """One plan's limits and prices (cents, USD)."""

    name: str
    monthly_limit: int  # generations per period
    price_cents: int  # per month; 0 for the trial
    overage_allowed: bool
    overage_price_cents: int  # per generation beyond the allowance (0 when not allowed)
    max_duration_seconds: float  # longest sound a request may ask for
    requests_per_minute: int  # submissions per user and minute (POST /usage/generate, POST /jobs)
    max_concurrent_jobs: int  # jobs queued or running at once per user
    stripe_price_id: str | None = None

    @property
    def is_paid(self) -> bool:
        return self.name != TRIAL

    @property
    def rate_limit(self) -> str:
        """The flask-limiter string for this plan's submission rate."""
        return f"{self.requests_per_minute} per minute"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "monthly_limit": self.monthly_limit, "price_cents": self.price_cents,
                "overage_allowed": self.overage_allowed, "overage_price_cents": self.overage_price_cents,
                "max_duration_seconds": self.max_duration_seconds,
                "requests_per_minute": self.requests_per_minute,
                "max_concurrent_jobs": self.max_concurrent_jobs, "stripe_price_id": self.stripe_price_id}


# The defaults. Trial: enough to try the plugin on a few sounds, short clips, one job in flight at a
# time plus one waiting. Paid plans scale the allowance roughly 5x per step at a falling unit price,
# and the caps on rate and parallel jobs keep one account from taking the whole upstream pool.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "trial": dict(monthly_limit=10, price_cents=0, overage_allowed=False, overage_price_cents=0,
                  max_duration_seconds=10.0, requests_per_minute=10, max_concurrent_jobs=2),
    "starter": dict(monthly_limit=200, price_cents=900, overage_allowed=False, overage_price_cents=0,
                    max_duration_seconds=22.0, requests_per_minute=20, max_concurrent_jobs=3),
    "pro": dict(monthly_limit=1000, price_cents=2900, overage_allowed=True, overage_price_cents=4,
                max_duration_seconds=30.0, requests_per_minute=60, max_concurrent_jobs=5),
    "studio": dict(monthly_limit=5000, price_cents=9900, overage_allowed=True, overage_price_cents=3,
                   max_duration_seconds=30.0, requests_per_minute=120, max_concurrent_jobs=10),
}


class Catalogue(Mapping[str, Plan]):
    """Plans by name, in display order (trial first)."""

    def __init__(self, plans: list[Plan]) -> None:
        self._plans = {p.name: p for p in plans}

    def __getitem__(self, name: str) -> Plan:
        return self._plans[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    @property
    def trial(self) -> Plan:
        return self._plans[TRIAL]

    def paid(self) -> list[Plan]:
        return [p for p in self._plans.values() if p.is_paid]

    def by_stripe_price(self, price_id: str) -> Plan | None:
        """The plan sold under a Stripe price id (for webhooks), if any."""
        return next((p for p in self._plans.values() if price_id and p.stripe_price_id == price_id), None)


def catalogue(config: Mapping[str, Any]) -> Catalogue:
    """The plans as configured for this app."""
    overrides: Mapping[str, Mapping[str, Any]] = config.get("PLAN_OVERRIDES") or {}
    plans = []
    for name in PLAN_NAMES:
        fields = dict(_DEFAULTS[name])
        if name == TRIAL and config.get("TRIAL_GENERATION_LIMIT") is not None:
            fields["monthly_limit"] = int(config["TRIAL_GENERATION_LIMIT"])
        stripe_price = None if name == TRIAL else config.get(f"STRIPE_PRICE_{name.upper()}")
        plan = Plan(name=name, stripe_price_id=stripe_price, **fields)
        if name in overrides:
            plan = replace(plan, **overrides[name])
        plans.append(plan)
    return Catalogue(plans)
