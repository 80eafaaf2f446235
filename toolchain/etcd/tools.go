//go:build tools

// Package tools keeps etcd's main package (the root of go.etcd.io/etcd/server/v3) in this
// module's graph, so that `go build go.etcd.io/etcd/server/v3` builds it at the pinned release.
package tools

import _ "go.etcd.io/etcd/server/v3"
