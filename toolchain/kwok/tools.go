//go:build tools

// Package tools keeps kwok (sigs.k8s.io/kwok/cmd/kwok) in this module's graph at the pinned release.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
