//go:build tools

// Package tools keeps the CLI's main package in this module's graph, so that
// `go build github.com/pulumi/pulumi/pkg/v3/cmd/pulumi` builds it at the pinned version.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
