"""Apple's MDM channel: the push certificate, and (to come) enrollment profiles, SCEP and the check-in and
command protocols (docs/apple-mdm.md)."""
