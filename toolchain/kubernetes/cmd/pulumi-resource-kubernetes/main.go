// The provider's entry point, as upstream's cmd/pulumi-resource-kubernetes/main.go at
// v4.25.0. Upstream's own main cannot be built from the module cache: it embeds
// schema-embed.json and terraform-mapping-embed.json, which its generate.go writes at
// build time and which are not in the module. scripts/toolchain runs that generate.go
// beside this file (VERSION set, as upstream's Makefile does) before it builds.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, pulumiSchema, terraformMapping)
}
