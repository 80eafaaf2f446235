//go:build tools

// Package tools keeps kube-apiserver's main package in this module's graph, so that
// `go build k8s.io/kubernetes/cmd/kube-apiserver` builds it at the pinned release.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
