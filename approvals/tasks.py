from __future__ import annotations

from celery import shared_task

from audit.context import acting

from . import services


@shared_task(ignore_result=True)
def expire_and_remind() -> dict[str, int]:
    """Beat: expire pending requests past their deadline and remind approvers of those about to lapse."""
    with acting(None, via="beat"):
        return {"expired": services.expire_overdue(), "reminded": services.send_reminders()}
