"""Housekeeping jobs, run on schedules (cron, from the settings) by any worker.

procrastinate defers a periodic job once per scheduled time however many workers run (a unique row per task
and timestamp in ``procrastinate_periodic_defers``). Each housekeeping task also carries a lock (no two of its
jobs run at once) and a queueing lock (at most one waits), so a slow run is never stacked up behind. The work
itself is in :mod:`corral.worker.housekeeping` and safe to repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from procrastinate import JobContext, jobs
from procrastinate.exceptions import UniqueViolation
from procrastinate.tasks import Task

from corral.apple import push as apple_push
from corral.compliance import jobs as compliance_jobs
from corral.config import Settings
from corral.delivery import service as _delivery  # noqa: F401 - registers the wake-up listener
from corral.worker import housekeeping
from corral.worker.app import app, resources

log = logging.getLogger("corral.worker.housekeeping")

HOUSEKEEPING_QUEUE = "housekeeping"


def _housekeeping(name: str) -> Callable[[Any], Task[Any, Any, Any]]:
    full = f"housekeeping.{name}"
    return app.task(name=full, queue=HOUSEKEEPING_QUEUE, lock=full, queueing_lock=full, pass_context=True)


@_housekeeping("purge_device_nonces")
async def purge_device_nonces(context: JobContext, timestamp: int) -> int:
    """Device signature nonces past the replay window."""
    res = resources(context)
    deleted = await housekeeping.purge_device_nonces(
        res.sessionmaker, batch=res.settings.housekeeping_batch_size
    )
    log.info("housekeeping: deleted %d expired device nonces", deleted)
    return deleted


@_housekeeping("purge_checkin_days")
async def purge_checkin_days(context: JobContext, timestamp: int) -> int:
    """Check-in days past their retention (the dashboard shows the last 7)."""
    res = resources(context)
    deleted = await housekeeping.purge_checkin_days(
        res.sessionmaker, res.settings, batch=res.settings.housekeeping_batch_size
    )
    log.info("housekeeping: deleted %d old check-in days", deleted)
    return deleted


@_housekeeping("purge_user_sessions")
async def purge_user_sessions(context: JobContext, timestamp: int) -> int:
    """Admin sessions that ended (absolute lifetime, idle timeout, disabled account)."""
    res = resources(context)
    deleted = await housekeeping.purge_user_sessions(
        res.sessionmaker, res.settings, batch=res.settings.housekeeping_batch_size
    )
    log.info("housekeeping: deleted %d ended admin sessions", deleted)
    return deleted


@_housekeeping("purge_signin_throttles")
async def purge_signin_throttles(context: JobContext, timestamp: int) -> int:
    """Sign-in failure counters whose window and lock-out have passed."""
    res = resources(context)
    deleted = await housekeeping.purge_signin_throttles(
        res.sessionmaker, res.settings, batch=res.settings.housekeeping_batch_size
    )
    log.info("housekeeping: deleted %d stale sign-in throttle rows", deleted)
    return deleted


@_housekeeping("expire_commands")
async def expire_commands(context: JobContext, timestamp: int) -> int:
    """Open device commands past their deadline."""
    res = resources(context)
    outcome = await housekeeping.expire_commands(res.sessionmaker, batch=res.settings.housekeeping_batch_size)
    log.info(
        "housekeeping: expired %d device commands (%d devices managed again, %d skipped: device busy)",
        outcome.expired,
        outcome.devices_managed_again,
        outcome.skipped_busy,
    )
    return outcome.expired


@_housekeeping("retry_stalled_jobs")
async def retry_stalled_jobs(context: JobContext, timestamp: int) -> int:
    """Jobs left running by a worker that died (no heartbeat) are queued again; one whose queueing lock is
    taken by a newer waiting job (a periodic one, usually) is marked failed instead."""
    manager = context.app.job_manager
    stalled = list(await manager.get_stalled_jobs())
    for job in stalled:
        assert job.id is not None
        try:
            await manager.retry_job(job)
        except UniqueViolation:
            await manager.finish_job_by_id_async(job.id, status=jobs.Status.FAILED, delete_job=False)
    log.info("housekeeping: %d stalled jobs of dead workers queued again or closed", len(stalled))
    return len(stalled)


@_housekeeping("purge_finished_jobs")
async def purge_finished_jobs(context: JobContext, timestamp: int) -> None:
    """Finished jobs (any outcome) older than the retention period."""
    hours = resources(context).settings.job_retention_hours
    await context.app.job_manager.delete_old_jobs(
        nb_hours=hours, include_failed=True, include_cancelled=True, include_aborted=True
    )
    log.info("housekeeping: deleted finished jobs older than %d hours", hours)


@_housekeeping("purge_history")
async def purge_history(context: JobContext, timestamp: int) -> dict[str, int]:
    """Audit events, inventory changes, finished commands and compliance changes past their retention."""
    res = resources(context)
    deleted = await housekeeping.purge_history(
        res.sessionmaker, res.settings, batch=res.settings.housekeeping_batch_size
    )
    log.info("housekeeping: deleted history past its retention: %s", deleted)
    return deleted


@_housekeeping("apple_push_sweep")
async def apple_push_sweep(context: JobContext, timestamp: int) -> bool:
    """Apple wake-ups due with no job on its way to send them (lost with a worker that died): one is
    queued."""
    due = await apple_push.sweep(resources(context).sessionmaker)
    if due:
        log.info("housekeeping: Apple wake-ups are due: the %s job is queued", apple_push.TASK)
    return due


SCHEDULES: dict[str, tuple[Task[Any, Any, Any], Callable[[Settings], str]]] = {
    "purge_device_nonces": (purge_device_nonces, lambda s: s.housekeeping_nonces_cron),
    "purge_user_sessions": (purge_user_sessions, lambda s: s.housekeeping_sessions_cron),
    "purge_checkin_days": (purge_checkin_days, lambda s: s.housekeeping_checkin_days_cron),
    "compliance_evaluate_due": (compliance_jobs.evaluate_due, lambda s: s.compliance_cron),
    "purge_signin_throttles": (purge_signin_throttles, lambda s: s.housekeeping_signin_throttles_cron),
    "expire_commands": (expire_commands, lambda s: s.housekeeping_commands_cron),
    "retry_stalled_jobs": (retry_stalled_jobs, lambda s: s.housekeeping_stalled_jobs_cron),
    "purge_finished_jobs": (purge_finished_jobs, lambda s: s.housekeeping_finished_jobs_cron),
    "purge_history": (purge_history, lambda s: s.housekeeping_retention_cron),
    "apple_push_sweep": (apple_push_sweep, lambda s: s.apple_push_sweep_cron),
}


def schedule(settings: Settings) -> None:
    """(Re)register the periodic jobs with the schedules in ``settings``; a worker started afterwards defers
    them."""
    app.periodic_registry.periodic_tasks.clear()
    for task, cron in SCHEDULES.values():
        app.periodic(cron=cron(settings))(task)
