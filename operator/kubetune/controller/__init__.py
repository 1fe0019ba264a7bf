"""The operator shell: kopf handlers, Kubernetes calls, admission webhook and metrics server.

Run it with `kubetune operator` or `kopf run -m kubetune.controller.main --all-namespaces`; both build
it with kubetune.controller.app.build_operator(settings). Everything that decides something lives in
the pure core (kubetune.render, kubetune.derivation, kubetune.gates, kubetune.planning, kubetune.api);
this package only wires it to the cluster.
"""
