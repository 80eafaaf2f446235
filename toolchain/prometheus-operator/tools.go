//go:build tools

// Package tools keeps controller-gen and the Prometheus Operator's API types in this module's
// graph at the pinned releases: the CRDs are generated from the types, as upstream's Makefile does.
package tools

import (
	_ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
