"""Background jobs on PostgreSQL (procrastinate): the job API (:mod:`corral.worker.app`), the housekeeping
jobs (:mod:`corral.worker.tasks`), and running a worker (:mod:`corral.worker.runner`: ``corral worker``, or
inside ``corral serve``). See docs/operations.md#background-jobs-and-housekeeping."""

# The PostgreSQL schema holding procrastinate's tables, functions and types (created by the migration
# ``job queue``). The worker's own connections put it on their search path; Corral's tables stay in public.
JOB_QUEUE_SCHEMA = "procrastinate"
