//go:build tools

// Package tools keeps MetalLB's controller (go.universe.tf/metallb/controller) in this module's
// graph at the pinned release.
package tools

import _ "go.universe.tf/metallb/controller"
