//go:build tools

// Package tools keeps regbot (github.com/regclient/regclient/cmd/regbot), the registry client
// the retention CronJob runs, in this module's graph at the pinned release.
package tools

import _ "github.com/regclient/regclient/cmd/regbot"
