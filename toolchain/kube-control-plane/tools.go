//go:build tools

// Package tools keeps the control plane's main packages in this module's graph, so that
// `go build k8s.io/kubernetes/cmd/...` builds them at the pinned release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
