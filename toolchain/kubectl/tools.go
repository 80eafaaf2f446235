//go:build tools

// Package tools keeps kubectl (k8s.io/kubernetes/cmd/kubectl), the client the maintenance
// CronJob's image (registry.k8s.io/kubectl) runs, in this module's graph at the pinned release.
package tools

import _ "k8s.io/kubernetes/cmd/kubectl"
