"""All models, imported here so Alembic and the app see every table."""
from .audit import AuditEntry
from .billing import (BillingCustomer, MeterEventStatus, OverageCharge, PlanType, StripeEvent,
                      StripeEventStatus, Subscription, SubscriptionStatus)
from .deletion import StorageDeletion
from .device import DeviceAuthorization
from .heartbeat import ServiceHeartbeat
from .job import FINISHED, Job, JobAttempt, JobStatus, OutputFormat, QuotaState
from .key_pool import ApiKey, ApiKeyStatus, KeyLease
from .notification import Notification, NotificationKind, NotificationStatus
from .types import utcnow
from .usage import ApiUsage, MonthlyUsage
from .user import AuthSession, User, UserRole, UserStatus
from .verification import EmailVerificationToken
from .webhook import WebhookAttempt, WebhookDelivery, WebhookSecret, WebhookStatus

__all__ = [
    "BillingCustomer", "MeterEventStatus", "OverageCharge", "StripeEvent", "StripeEventStatus",
    "AuditEntry", "Notification", "ServiceHeartbeat", "NotificationKind", "NotificationStatus", "StorageDeletion",
    "ApiKey", "ApiKeyStatus", "ApiUsage", "AuthSession", "FINISHED", "Job", "JobAttempt", "JobStatus", "KeyLease",
    "MonthlyUsage", "OutputFormat", "PlanType", "QuotaState", "Subscription", "SubscriptionStatus",
    "User", "UserRole", "UserStatus", "utcnow",
    "EmailVerificationToken", "DeviceAuthorization",
    "WebhookAttempt", "WebhookDelivery", "WebhookSecret", "WebhookStatus",
]
