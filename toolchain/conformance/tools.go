//go:build tools

// Package tools keeps the OCI distribution-spec conformance test
// (github.com/opencontainers/distribution-spec/conformance, a main package) in this module's
// graph at the pinned commit.
package tools

import _ "github.com/opencontainers/distribution-spec/conformance"
