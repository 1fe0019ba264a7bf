"""The operator shell: kopf handlers, Kubernetes calls, admission webhook and metrics server.

Run it with `kopf run -m kubetune.operator.main --all-namespaces` or `kubetune operator`.
Everything that decides something lives in the pure core (kubetune.render, kubetune.status,
kubetune.gates, kubetune.planning, kubetune.api); this package only wires it to the cluster.
"""
