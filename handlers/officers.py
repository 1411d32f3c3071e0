"""The officers' registry and who may do what, where. Deny by default.

Roles: ``officer`` acts on reports in the queues they serve; ``commander`` also decides rewards;
``admin`` may do anything anywhere, and enrols and revokes officers. A scope of ``*`` serves every
queue. Anyone not in the registry, revoked, or not serving the queue may do nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AuditEvent, Officer, OfficerScope
from storage.types import utcnow

ROLES: Final = ("officer", "commander", "admin")
ALL_QUEUES: Final = "*"

#: Actions on a report, by the lowest role that may take them (in a queue the officer serves).
ACTION_ROLE: Final = {
    "claim": "officer",
    "ask": "officer",
    "progress": "officer",
    "transfer": "officer",
    "resolve": "officer",
    "reject": "officer",
    "duplicate": "officer",
    "view": "officer",
    "reward_propose": "officer",
    "reward_payout": "officer",
    "reward_decide": "commander",
    "enrol": "admin",
    "revoke": "admin",
}


def rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


def scope_keys(officer: Officer) -> list[str]:
    """The queue keys ``officer`` serves, sorted (``*`` for every queue)."""
    return sorted({scope.queue_key for scope in officer.scopes})


def serves(officer: Officer, queue_key: str | None) -> bool:
    keys = {scope.queue_key for scope in officer.scopes}
    return ALL_QUEUES in keys or (queue_key is not None and queue_key in keys)


def may(officer: Officer | None, action: str, queue_key: str | None) -> bool:
    """Whether ``officer`` may take ``action`` on a report in ``queue_key``."""
    if officer is None or not officer.active:
        return False
    needed = ACTION_ROLE.get(action)
    if needed is None or rank(officer.role) < rank(needed):
        return False
    return officer.role == "admin" or serves(officer, queue_key)


class Registry:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_telegram(self, user_id: int) -> Officer | None:
        return await self.session.scalar(
            select(Officer).where(Officer.telegram_user_id == user_id)
        )

    async def by_id(self, officer_id: int) -> Officer | None:
        return await self.session.get(Officer, officer_id)

    async def ensure_admins(self, telegram_ids: Iterable[int]) -> None:
        """Bootstrap: the configured Telegram ids are active admins serving every queue."""
        for user_id in telegram_ids:
            officer = await self.by_telegram(user_id)
            if officer is None:
                officer = Officer(
                    display_name=f"Admin {user_id}",
                    role="admin",
                    telegram_user_id=user_id,
                    scopes=[],
                )
                self.session.add(officer)
                await self.session.flush()
            officer.role = "admin"
            officer.active = True
            officer.revoked_at = None
            if not serves(officer, ALL_QUEUES):
                officer.scopes.append(OfficerScope(queue_key=ALL_QUEUES))
        await self.session.flush()

    async def enrol(
        self,
        *,
        telegram_user_id: int,
        display_name: str,
        role: str,
        queue_key: str,
        by: Officer | None,
        via: str = "chat",
    ) -> Officer:
        """Add an officer, or re-activate one, to serve exactly ``queue_key``.

        Enrolment *sets* the person's role and scopes: whatever they served before (``*``
        included) is gone, so re-enrolling a commander of every queue as an officer of one
        queue leaves them an officer of that one queue. The audit event holds the old and the
        new scopes.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        officer = await self.by_telegram(telegram_user_id)
        if officer is None:
            officer = Officer(
                display_name=display_name[:200],
                role=role,
                telegram_user_id=telegram_user_id,
                created_by_id=by.id if by else None,
                scopes=[],
            )
            self.session.add(officer)
            await self.session.flush()
        officer.role = role
        officer.active = True
        officer.revoked_at = None
        if display_name:
            officer.display_name = display_name[:200]
        old_scopes = scope_keys(officer)
        # Keep the row of a scope that stays (the unique constraint would refuse a second).
        kept = [scope for scope in officer.scopes if scope.queue_key == queue_key]
        officer.scopes = kept or [OfficerScope(queue_key=queue_key)]
        await self.session.flush()
        self.audit(
            "enrolled",
            by=by,
            via=via,
            subject=officer,
            role=role,
            queue=queue_key,
            old_scopes=old_scopes,
            new_scopes=[queue_key],
        )
        return officer

    def audit(
        self,
        action: str,
        *,
        by: Officer | None,
        via: str,
        subject: Officer | None = None,
        **data: object,
    ) -> None:
        """One audit event about the registry or the panel (not about a report)."""
        self.session.add(
            AuditEvent(
                at=utcnow(),
                actor_id=by.id if by is not None else None,
                via=via,
                action=action,
                subject_id=subject.id if subject is not None else None,
                data=data or None,
            )
        )

    async def revoke(
        self, officer: Officer, *, by: Officer | None = None, via: str = "chat"
    ) -> None:
        """Deactivate ``officer`` and clear every scope they held (audited, old and new)."""
        old_scopes = scope_keys(officer)
        officer.active = False
        officer.revoked_at = utcnow()
        officer.scopes = []
        officer.session_generation = (officer.session_generation or 0) + 1  # ends web sessions
        await self.session.flush()
        self.audit(
            "revoked", by=by, via=via, subject=officer, old_scopes=old_scopes, new_scopes=[]
        )

    async def serving(self, queue_key: str) -> Sequence[Officer]:
        result = await self.session.scalars(
            select(Officer)
            .join(OfficerScope)
            .where(OfficerScope.queue_key.in_((queue_key, ALL_QUEUES)), Officer.active.is_(True))
            .order_by(Officer.role.desc(), Officer.display_name)
        )
        return result.unique().all()
