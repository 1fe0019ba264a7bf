"""The operator shell: kopf handlers, Kubernetes calls, admission webhook and metrics server.

Run it with `kubetune operator` or `kopf run -m kubetune.operator.main --all-namespaces`; both build
it with kubetune.operator.app.build_operator(settings). Everything that decides something lives in
the pure core (kubetune.render, kubetune.status, kubetune.gates, kubetune.planning, kubetune.api);
this package only wires it to the cluster.
"""
