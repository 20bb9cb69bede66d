"""The agent's configuration file (JSON), written by whoever deploys the agent — not by the server.

```json
{"managed_data_dirs": ["/srv/company-data"], "allow_destructive": false, "simulate": false}
```

Destructive commands (wipe, retire's data part, restart, shutdown) are refused unless ``allow_destructive`` is
true, and wipe only ever deletes the contents of ``managed_data_dirs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from corral_agent.errors import ConfigError

_KNOWN = {"managed_data_dirs", "allow_destructive", "simulate", "settings_root"}


@dataclass(frozen=True)
class AgentConfig:
    managed_data_dirs: tuple[Path, ...] = field(default_factory=tuple)
    allow_destructive: bool = False
    simulate: bool = False
    #: Where configuration profiles' settings are written (appliers): "/" on a real device.
    settings_root: Path = Path("/")

    def __post_init__(self) -> None:
        dirs = tuple(Path(p) for p in self.managed_data_dirs)
        for path in dirs:
            if not path.is_absolute():
                raise ConfigError(f"managed_data_dirs: {str(path)!r} is not an absolute path")
            if path == Path(path.anchor):
                raise ConfigError(f"managed_data_dirs: refusing a filesystem root ({path})")
        object.__setattr__(self, "managed_data_dirs", dirs)
        root = Path(self.settings_root)
        if not root.is_absolute():
            raise ConfigError(f"settings_root: {str(root)!r} is not an absolute path")
        object.__setattr__(self, "settings_root", root)

    @classmethod
    def from_dict(cls, data: Any) -> AgentConfig:
        if not isinstance(data, dict):
            raise ConfigError("the configuration must be a JSON object")
        unknown = sorted(set(data) - _KNOWN)
        if unknown:
            raise ConfigError(
                f"unknown configuration keys: {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})"
            )
        dirs = data.get("managed_data_dirs", [])
        if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
            raise ConfigError("managed_data_dirs must be a list of absolute paths")
        for name in ("allow_destructive", "simulate"):
            if not isinstance(data.get(name, False), bool):
                raise ConfigError(f"{name} must be true or false")
        return cls(
            managed_data_dirs=tuple(Path(d) for d in dirs),
            allow_destructive=data.get("allow_destructive", False),
            simulate=data.get("simulate", False),
            settings_root=Path(str(data.get("settings_root") or "/")),
        )

    @classmethod
    def load(cls, path: Path | str) -> AgentConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def with_simulate(self, simulate: bool) -> AgentConfig:
        return replace(self, simulate=simulate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "managed_data_dirs": [str(p) for p in self.managed_data_dirs],
            "allow_destructive": self.allow_destructive,
            "simulate": self.simulate,
            "settings_root": str(self.settings_root),
        }
