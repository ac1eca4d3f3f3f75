"""Usage notifications: a threshold crossed -> the outbox -> email and a signed webhook.

``crossings`` finds the thresholds (80, 95, 100 %) that running totals crossed
and writes one outbox row per message; ``outbox`` leases due rows to one run
at a time; ``mail`` and ``webhook`` deliver them; ``run`` is one
``flask send-notifications``. Nothing here is on the recording path.
"""
