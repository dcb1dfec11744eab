package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha512 for go-digest
	"encoding/json"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layout is one generated layout: its directory name under DIR and its files
// (slash-separated paths relative to the layout root).
type Layout struct {
	Name  string
	Files map[string][]byte
}

// Created is the one timestamp of the corpus.
const Created = "2024-01-01T00:00:00Z"

var createdTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Media types that image-spec does not define.
const (
	mtDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerConfig       = "application/vnd.docker.container.image.v1+json"
	mtDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtDockerForeign      = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	mtArtifactManifest   = "application/vnd.oci.artifact.manifest.v1+json"
	mtInToto             = "application/vnd.in-toto+json"
	mtEmpty              = "application/vnd.oci.empty.v1+json"
)

// builder accumulates the files of one layout.
type builder struct {
	files map[string][]byte
	alg   digest.Algorithm
}

func newBuilder(alg digest.Algorithm) *builder {
	b := &builder{files: map[string][]byte{}, alg: alg}
	b.files["oci-layout"] = []byte(`{"imageLayoutVersion":"1.0.0"}`)
	return b
}

func (b *builder) layout(name string) Layout { return Layout{Name: name, Files: b.files} }

// blob stores content and returns its descriptor.
func (b *builder) blob(content []byte, mt string) v1.Descriptor {
	d := b.alg.FromBytes(content)
	b.files["blobs/"+d.Algorithm().String()+"/"+d.Encoded()] = content
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(content))}
}

// compact marshals v as compact JSON.
func compact(v any) []byte {
	out, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return out
}

// indent marshals v indented with prefix-free indent ind, as Docker ("   ")
// and BuildKit ("  ") write their manifests.
func indent(v any, ind string) []byte {
	out, err := json.MarshalIndent(v, "", ind)
	if err != nil {
		panic(err)
	}
	return out
}

// json stores v (marshaled by enc) as a blob of media type mt.
func (b *builder) json(v any, mt string, enc func(any) []byte) v1.Descriptor {
	return b.blob(enc(v), mt)
}

// layer stores a gzipped tar holding one regular file name with content and
// returns its descriptor and diff ID (the digest of the uncompressed tar).
// The gzip stream is uncompressed (stored blocks): deterministic by format.
func (b *builder) layer(name, content, mt string) (v1.Descriptor, digest.Digest) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content)),
		ModTime: createdTime, Format: tar.FormatUSTAR,
	}
	must(tw.WriteHeader(hdr))
	_, err := tw.Write([]byte(content))
	must(err)
	must(tw.Close())
	var gb bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gb, gzip.NoCompression)
	must(err)
	_, err = zw.Write(tb.Bytes())
	must(err)
	must(zw.Close())
	return b.blob(gb.Bytes(), mt), b.alg.FromBytes(tb.Bytes())
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// image is what a config describes.
type image struct {
	arch, os, variant, osVersion string
	cmd                          string
	diffIDs                      []digest.Digest
	history                      []string // created_by of each layer
}

// configJSON is an image config (OCI or Docker: the same shape). Maps
// marshal with sorted keys, as Docker's and BuildKit's do.
func configJSON(im image) map[string]any {
	hist := make([]map[string]any, 0, len(im.history))
	for _, h := range im.history {
		hist = append(hist, map[string]any{"created": Created, "created_by": h})
	}
	c := map[string]any{
		"architecture": im.arch,
		"os":           im.os,
		"created":      Created,
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd": []string{im.cmd},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": im.diffIDs},
		"history": hist,
	}
	if im.variant != "" {
		c["variant"] = im.variant
	}
	if im.osVersion != "" {
		c["os.version"] = im.osVersion
	}
	return c
}

// ociManifest is an OCI image manifest in image-spec's field order, with the
// 1.1 fields.
type ociManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType,omitempty"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Subject       *v1.Descriptor    `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// ociIndex is an OCI image index (or index.json).
type ociIndex struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType,omitempty"`
	Manifests     []any             `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// dockerDesc is a descriptor in Docker distribution's field order.
type dockerDesc struct {
	MediaType string       `json:"mediaType"`
	Size      int64        `json:"size"`
	Digest    string       `json:"digest"`
	URLs      []string     `json:"urls,omitempty"`
	Platform  *v1.Platform `json:"platform,omitempty"`
}

func docker(d v1.Descriptor) dockerDesc {
	return dockerDesc{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest.String(), URLs: d.URLs}
}

type dockerManifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        dockerDesc   `json:"config"`
	Layers        []dockerDesc `json:"layers"`
}

type dockerManifestList struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []dockerDesc `json:"manifests"`
}

// tagged returns d named name in index.json (extra annotations kept).
func tagged(d v1.Descriptor, name string, extra ...string) v1.Descriptor {
	d.Annotations = map[string]string{v1.AnnotationRefName: name}
	for i := 0; i+1 < len(extra); i += 2 {
		d.Annotations[extra[i]] = extra[i+1]
	}
	return d
}

func (b *builder) index(ix ociIndex) {
	b.files["index.json"] = compact(ix)
}
