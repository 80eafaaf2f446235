//go:build tools

// Package tools keeps distribution's registry (github.com/distribution/distribution/v3/cmd/registry),
// the binary of the registry image components/settings.py pins (DEFAULT_IMAGE), in this module's
// graph at that release.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
