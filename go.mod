module github.com/ocistore/ocistore

go 1.26.8

require (
	github.com/google/renameio/v2 v2.0.2
	github.com/lmittmann/tint v1.2.1
	github.com/opencontainers/go-digest v1.0.0
	github.com/opencontainers/image-spec v1.1.1
	go.etcd.io/bbolt v1.5.0
	golang.org/x/term v0.48.0
	pgregory.net/rapid v1.3.0
)

require (
	golang.org/x/crypto v0.59.0
	golang.org/x/sys v0.50.0
	oras.land/oras-go/v2 v2.7.0
)

require golang.org/x/sync v0.24.0 // indirect
