//go:build tools

// Package tools keeps crictl (sigs.k8s.io/cri-tools/cmd/crictl), the CRI client the kubelet's
// image pulls are replayed with, in this module's graph at the pinned release.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
