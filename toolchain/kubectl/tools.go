//go:build tools

// Package tools keeps kubectl (k8s.io/kubernetes/cmd/kubectl), the Kubernetes client the tests
// use a stolen maintenance token with, in this module's graph at the pinned release.
package tools

import _ "k8s.io/kubernetes/cmd/kubectl"
