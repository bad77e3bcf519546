"""Outbound connections of tracking servers (MLflow's AI gateway, judges, providers).

* ``policy``: where a server may connect: the allowlist of provider hosts and the operator's
  entries, public addresses only for names, the per-server switch (tag ``mlfleet:egress``).
* ``proxy``: the daemon's egress proxy, the one way out for a worker with no network:
  authenticates the server, checks the resolved address it connects to, records each
  connection as a data event.

The worker's side, a loopback forwarder inside the sandbox, is ``runtime.egress_forwarder``.
"""
