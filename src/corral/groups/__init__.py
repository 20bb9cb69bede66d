"""Groups: static and dynamic groups of devices or users.

``rules`` is the dynamic-membership rule language (pure: parser, validation, Python evaluator);
``rule_sql`` compiles a parsed rule to a SQLAlchemy expression over a bound attribute schema."""
