"""Licences: products the organisation holds seats of, and which users hold one (needed to enroll devices)."""
