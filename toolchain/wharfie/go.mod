// k3s's reading of registries.yaml: rancher/wharfie's registries package, at the release a k3s
// 1.33 build of March 2026 resolves to (k3s v1.33.10-0.20260316230806-13a8403081db). The k3s
// module itself is not served by the module proxy.
module k3s-registry/toolchain/wharfie

go 1.26.0

require (
	github.com/rancher/wharfie v0.7.1
	github.com/sirupsen/logrus v1.9.3
)

require (
	github.com/containerd/stargz-snapshotter/estargz v0.14.3 // indirect
	github.com/docker/cli v29.0.4+incompatible // indirect
	github.com/docker/distribution v2.8.3+incompatible // indirect
	github.com/docker/docker-credential-helpers v0.7.0 // indirect
	github.com/google/go-containerregistry v0.20.2 // indirect
	github.com/klauspost/compress v1.18.0 // indirect
	github.com/kr/pretty v0.3.1 // indirect
	github.com/mitchellh/go-homedir v1.1.0 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	github.com/vbatts/tar-split v0.11.3 // indirect
	golang.org/x/sync v0.17.0 // indirect
	golang.org/x/sys v0.36.0 // indirect
	gopkg.in/yaml.v2 v2.4.0 // indirect
)
