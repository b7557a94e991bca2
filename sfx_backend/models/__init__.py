"""All models, imported here so Alembic and the app see every table."""
from .billing import PlanType, Subscription, SubscriptionStatus
from .job import FINISHED, Job, JobAttempt, JobStatus, OutputFormat, QuotaState
from .key_pool import ApiKey, ApiKeyStatus, KeyLease
from .types import utcnow
from .usage import ApiUsage, MonthlyUsage
from .user import AuthSession, User, UserRole, UserStatus

__all__ = [
    "ApiKey", "ApiKeyStatus", "ApiUsage", "AuthSession", "FINISHED", "Job", "JobAttempt", "JobStatus", "KeyLease",
    "MonthlyUsage", "OutputFormat", "PlanType", "QuotaState", "Subscription", "SubscriptionStatus",
    "User", "UserRole", "UserStatus", "utcnow",
]
