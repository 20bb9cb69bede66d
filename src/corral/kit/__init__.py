"""Building blocks without domain logic: database, security helpers, pagination, CSV, time."""
