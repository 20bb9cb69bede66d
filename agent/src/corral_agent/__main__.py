"""``python -m corral_agent`` is ``corral-agent``."""

from corral_agent.cli import main

raise SystemExit(main())
