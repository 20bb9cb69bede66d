"""Device commands: one registry of command classes, one repository for every query on ``device_commands`` and
one lifecycle service (queue, deliver, results, cancel, clear, approval, expiry) shared by the admin actions,
the bulk actions, check-in and the worker. See docs/commands.md."""
