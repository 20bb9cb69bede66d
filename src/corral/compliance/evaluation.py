"""Compliance evaluation as one set-based statement per batch of devices (docs/policies.md, "Compliance").

``EVALUATE`` computes each device's result under each compliance policy that reaches it — every setting
checked by its SQL from the catalog (``catalog.Sql``), the policy's state with its noncompliance episode and
grace period — and writes the results that differ from those stored (results of policies that no longer reach
the device, or of a device without inventory, are deleted); from the same results it computes each device's
state (an override, the validity period, no policy, else the worst of its policies) and its reason, and for
the devices whose state changed writes the new state and a history entry, which it returns.

The statement is the same text whatever the batch (the devices are one array parameter). The catalog's Python
checks are its specification: a differential test holds the SQL to them
(tests/compliance/test_evaluation_sql.py).
"""

from __future__ import annotations

import json

from sqlalchemy import Boolean, DateTime, Integer, String, TextClause, bindparam, text

from corral.compliance import catalog
from corral.groups.effective import UUIDS
from corral.groups.membership import ENDED_STATES

_ENDED = ", ".join(f"'{s.value}'" for s in ENDED_STATES)


def _expected(setting: catalog.Setting, policy: str = "policy") -> str:
    """The policy's value of the setting (jsonb)."""
    return f"({policy}.settings -> '{setting.id}')"


def _fragment(index: int, setting: catalog.Setting) -> str:
    """The setting's result as JSON text (``,"id":{...}``), NULL when the policy does not ask for it."""
    state = f"x.s{index}"
    message = json.dumps(f"The device does not report {setting.reads}.").replace("'", "''")
    return (
        f'CASE WHEN {state} IS NOT NULL THEN policy.pre{index} || {state} || \'","observed":\' '
        f"|| CASE WHEN {state} = 'error' THEN 'null,\"message\":{message}' "
        f"ELSE ({setting.sql.observed(_expected(setting))})::text END || '}}' END"
    )


def _prefix(index: int, setting: catalog.Setting) -> str:
    """Once per policy: the start of the setting's result as JSON text, up to its state (NULL when the policy
    does not ask for the setting)."""
    return (
        f", CASE WHEN p.settings ? '{setting.id}' THEN ',\"{setting.id}\":{{\"expected\":' "
        f'|| {_expected(setting, "p")}::text || \',"state":"\' END AS pre{index}'
    )


#: Each setting's state (``x.s0`` …), NULL when the policy does not ask for it.
_STATES = ",\n".join(
    f"CASE WHEN policy.pre{i} IS NOT NULL THEN {s.sql.state(_expected(s), f'policy.k{i}')} END AS s{i}"
    for i, s in enumerate(catalog.SETTINGS)
)
#: Computed once per policy: its values turned (versions as arrays of numbers, ``policy.k0`` …) and the
#: start of each setting's result (``policy.pre0`` …).
_KEYS = "".join(
    f", {s.sql.key.replace('$e', _expected(s, 'p'))} AS k{i}"
    for i, s in enumerate(catalog.SETTINGS)
    if s.sql.key
) + "".join(_prefix(i, s) for i, s in enumerate(catalog.SETTINGS))
_ALL_STATES = ", ".join(f"x.s{i}" for i in range(len(catalog.SETTINGS)))
#: The policy's settings' results as one jsonb object (built as text, parsed once: cheaper than building it).
_SETTINGS = (
    "('{' || substr(concat("
    + ", ".join(_fragment(i, s) for i, s in enumerate(catalog.SETTINGS))
    + "), 2) || '}')::jsonb"
)
_DEVICE_COLUMNS = ", ".join(f"dv.{c.key}" for c in catalog.EVALUATED)

EVALUATE_SQL = f"""
WITH d AS MATERIALIZED (
    SELECT dv.id, dv.compliance_state AS old, dv.inventory_updated_at, {_DEVICE_COLUMNS},
           CASE WHEN jsonb_typeof(dv.inventory -> 'security') = 'object' THEN dv.inventory -> 'security' END
               AS facts
    FROM devices dv
    WHERE dv.id = ANY(:ids) AND dv.management_state NOT IN ({_ENDED})
),
policy AS MATERIALIZED (
    SELECT p.id, a.version, p.settings, a.name{_KEYS},
           make_interval(hours => coalesce((
               SELECT coalesce((step ->> 'delay_hours')::int, 0)
               FROM jsonb_array_elements(coalesce(p.actions, '[]'::jsonb)) WITH ORDINALITY AS x(step, n)
               WHERE step ->> 'action' = 'mark_noncompliant' ORDER BY n LIMIT 1), 0)) AS grace
    FROM compliance_policies p JOIN assignables a ON a.id = p.id
    WHERE p.id IN (SELECT t.assignable_id FROM device_targets t WHERE t.device_id = ANY(:ids))
),
t AS (
    SELECT d.id AS device_id, policy.id AS policy_id, policy.version, policy.grace,
           {_SETTINGS} AS settings,
           coalesce('noncompliant' IN ({_ALL_STATES}), false) AS failing,
           coalesce('error' IN ({_ALL_STATES}), false) AS erroring
    FROM device_targets dt
    JOIN policy ON policy.id = dt.assignable_id
    JOIN d ON d.id = dt.device_id AND d.inventory_updated_at IS NOT NULL
    CROSS JOIN LATERAL (SELECT {_STATES} OFFSET 0) AS x  -- OFFSET 0: computed once, not inlined into each use
    WHERE dt.device_id = ANY(:ids)
),
n AS (
    SELECT t.device_id, t.policy_id, t.version, t.settings, t.failing, t.erroring, t.grace,
           CASE WHEN t.failing THEN coalesce(e.failing_since, :now) END AS failing_since,
           e.device_id IS NOT NULL AS stored, e.state AS e_state, e.policy_version AS e_version,
           e.failing_since AS e_failing_since, e.grace_ends_at AS e_grace_ends_at, e.settings AS e_settings
    FROM t
    LEFT JOIN device_compliance_policies e ON e.device_id = t.device_id AND e.policy_id = t.policy_id
),
m AS (
    SELECT n.*, s.state,
           CASE WHEN s.state = 'in_grace_period' THEN n.failing_since + n.grace END AS grace_ends_at
    FROM n CROSS JOIN LATERAL (SELECT CASE
        WHEN n.failing THEN
            CASE WHEN :now >= n.failing_since + n.grace THEN 'noncompliant' ELSE 'in_grace_period' END
        WHEN n.erroring THEN 'error'
        ELSE 'compliant' END AS state) AS s
),
gone AS (
    DELETE FROM device_compliance_policies e
    WHERE e.device_id = ANY(:ids)
      AND NOT EXISTS (SELECT FROM t WHERE t.device_id = e.device_id AND t.policy_id = e.policy_id)
),
written AS (
    -- Only the results that differ from those stored.
    INSERT INTO device_compliance_policies
        (device_id, policy_id, state, policy_version, failing_since, grace_ends_at, settings, evaluated_at)
    SELECT device_id, policy_id, state, version, failing_since, grace_ends_at, settings, :now
    FROM m
    WHERE NOT stored
       OR (e_state, e_version, e_failing_since, e_grace_ends_at, e_settings)
          IS DISTINCT FROM (state, version, failing_since, grace_ends_at, settings)
    ON CONFLICT (device_id, policy_id) DO UPDATE SET
        state = excluded.state, policy_version = excluded.policy_version,
        failing_since = excluded.failing_since, grace_ends_at = excluded.grace_ends_at,
        settings = excluded.settings, evaluated_at = excluded.evaluated_at
),
worst AS (
    -- The device's state from the results just computed (all the policies that reach it).
    SELECT m.device_id, max(m.rank) AS rank,
           (array_agg(m.name ORDER BY m.rank DESC, m.name COLLATE "C"))[1] AS name,
           string_agg(m.name, ', ' ORDER BY m.name COLLATE "C") AS names
    FROM (
        SELECT m.device_id, policy.name,
               CASE m.state WHEN 'compliant' THEN 0 WHEN 'in_grace_period' THEN 1 WHEN 'error' THEN 2
                            ELSE 3 END AS rank
        FROM m JOIN policy ON policy.id = m.policy_id
    ) AS m
    GROUP BY m.device_id
),
k AS (
    SELECT d.id, d.old, o.until, o.reason AS override_reason, o.created_by_name, worst.rank, worst.name,
           worst.names,
           CASE WHEN d.inventory_updated_at IS NULL THEN 'no inventory'
                WHEN o.until > :now THEN 'override'
                WHEN :now - coalesce(d.last_checkin_at, d.enrolled_at) > make_interval(days => :validity_days)
                     THEN 'stale'
                WHEN worst.device_id IS NULL THEN 'no policy'
                ELSE 'policies' END AS kind
    FROM d
    LEFT JOIN compliance_overrides o ON o.device_id = d.id
    LEFT JOIN worst ON worst.device_id = d.id
),
c AS (
    SELECT k.id, k.old, k.kind,
           CASE k.kind
               WHEN 'no inventory' THEN 'not_evaluated'
               WHEN 'override' THEN 'compliant'
               WHEN 'stale' THEN 'noncompliant'
               WHEN 'no policy' THEN CASE WHEN :no_policy_compliant THEN 'compliant' ELSE 'noncompliant' END
               ELSE CASE k.rank WHEN 0 THEN 'compliant' WHEN 1 THEN 'in_grace_period' WHEN 2 THEN 'error'
                                ELSE 'noncompliant' END
           END AS state,
           CASE k.kind
               WHEN 'no inventory' THEN 'the device has not reported its inventory yet'
               WHEN 'override' THEN
                   'marked compliant by ' || coalesce(nullif(k.created_by_name, ''), 'an administrator')
                   || ' until ' || to_char(k.until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24\\:MI') || ' UTC: '
                   || k.override_reason
               WHEN 'stale' THEN 'no check-in for more than ' || :validity_days || ' days'
               WHEN 'no policy' THEN
                   'no compliance policy is assigned (the tenant counts it '
                   || CASE WHEN :no_policy_compliant THEN 'compliant' ELSE 'noncompliant' END || ')'
               ELSE CASE k.rank WHEN 0 THEN 'meets ' || k.names
                                WHEN 1 THEN 'fails (in grace period) ' || k.name
                                WHEN 2 THEN 'cannot be evaluated against ' || k.name
                                ELSE 'fails ' || k.name END
           END AS why
    FROM k
),
moved AS (
    UPDATE devices dv SET compliance_state = c.state, updated_at = now()
    FROM c
    WHERE dv.id = c.id AND dv.id = ANY(:ids) AND c.state IS DISTINCT FROM c.old
    RETURNING dv.id, c.old, c.state, c.why,
              left(CASE WHEN c.kind = 'no inventory' OR :reason = '' THEN c.why
                        ELSE :reason || ': ' || c.why END, 2000) AS history
),
history AS (
    INSERT INTO device_compliance_history (device_id, at, old_state, new_state, reason)
    SELECT id, :now, old, state, history FROM moved
)
SELECT id, old, state, why, history FROM moved
"""  # noqa: S608 - built from the catalog's constants, no input


EVALUATE: TextClause = text(EVALUATE_SQL).bindparams(
    bindparam("ids", type_=UUIDS),
    bindparam("now", type_=DateTime(timezone=True)),
    bindparam("validity_days", type_=Integer),
    bindparam("no_policy_compliant", type_=Boolean),
    bindparam("reason", type_=String),
)
