//go:build tools

// Package tools pins the Kubernetes control-plane commands that cluster/build.sh
// builds with `go build`. It is never compiled into anything itself.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
