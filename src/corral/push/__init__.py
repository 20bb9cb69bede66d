"""Push: the wake-up channel to connected devices (device-protocol.md §7)."""
