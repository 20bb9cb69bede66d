from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from corral.auth.dependencies import Require
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

GroupsRead = Annotated[Principal, Depends(Require(P.groups_read))]
GroupsWrite = Annotated[Principal, Depends(Require(P.groups_write))]
