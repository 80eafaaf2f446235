// Command wharfie-registries reads a registries.yaml exactly as k3s does, and prints what k3s
// gets from it, as JSON: k3s's agent calls rancher/wharfie's registries.GetPrivateRegistries on
// the file (k3s-io/k3s pkg/agent/containerd, setupContainerdConfig), which unmarshals it with
// gopkg.in/yaml.v2 into wharfie's Registry type.
//
//	wharfie-registries FILE
//
// Exit status 2: wharfie refused the file (its error on stderr).
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/rancher/wharfie/pkg/registries"
	"github.com/sirupsen/logrus"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: wharfie-registries FILE")
		os.Exit(64)
	}
	logrus.SetOutput(os.Stderr)
	read, err := registries.GetPrivateRegistries(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(read.Registry); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
