"""Self-service: what any signed-in person (an end user, or an administrator for themselves) may see of their
own: the devices whose primary user they are."""
