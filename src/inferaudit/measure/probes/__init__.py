"""Audit traffic: the requests the judges need, planned from the run's secret seed and sent.

* ``plan`` (pure, sends nothing): :func:`~inferaudit.measure.probes.plan.plan_traffic` decides
  which measured positions carry fingerprint replays, repeated prompts (caching) and
  shared-prefix prompts (prefix reuse), and which requests remain for separate phases
  (conformance probes before the load; a supplementary ``audit`` block after it when the load is
  too short to hold them; a closed loop for a duration places them on demand, ``AuditStream``,
  and sends after it only what it fell short of). Every plan is drawn by the run's own
  ``Planner``: same body keys and value types, salt form, length distribution and API shape as
  the load.
* ``send``: sends a separate phase through the load runner and appends its records.
"""
