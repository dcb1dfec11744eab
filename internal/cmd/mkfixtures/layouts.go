package main

import (
	"encoding/json"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layouts returns every generated layout, in a fixed order.
func Layouts() []Layout {
	return []Layout{
		dockerSchema2(),
		buildkitMultiarch(),
		orasArtifacts(),
		sha512Layout(),
		nestedIndex(),
		noMediaType(),
	}
}

// dockerSchema2: Docker schema 2 manifests and a manifest list, as `docker
// save` of the containerd image store or `buildx --output
// type=oci,oci-mediatypes=false` write them. The Windows image starts with a
// foreign layer (its blob is not distributed: the layout does not have it).
func dockerSchema2() Layout {
	b := newBuilder(digest.SHA256)
	base, baseID := b.layer("etc/base-release", "docker base layer\n", mtDockerLayer)
	lin, linID := b.layer("app/linux.txt", "linux app layer\n", mtDockerLayer)
	win, winID := b.layer("app/windows.txt", "windows app layer\r\n", mtDockerLayer)

	// The foreign layer: a Windows base layer served by its vendor.
	foreignTar := []byte("windows servercore base layer: never in this layout")
	foreign := v1.Descriptor{
		MediaType: mtDockerForeign,
		Digest:    digest.FromString("foreign layer (compressed): " + string(foreignTar)),
		Size:      1548219413,
	}
	foreign.URLs = []string{"https://mcr.microsoft.com/v2/windows/servercore/blobs/" + foreign.Digest.String()}
	foreignID := digest.FromBytes(foreignTar)

	linCfg := b.json(configJSON(image{arch: "amd64", os: "linux", cmd: "/app/linux",
		diffIDs: []digest.Digest{baseID, linID},
		history: []string{"ADD base /", "COPY linux.txt /app/"}}), mtDockerConfig, compact)
	winCfg := b.json(configJSON(image{arch: "amd64", os: "windows", osVersion: "10.0.17763.5329", cmd: "C:\\app\\windows.exe",
		diffIDs: []digest.Digest{foreignID, baseID, winID},
		history: []string{"Apply image 10.0.17763.5329", "ADD base /", "COPY windows.txt /app/"}}), mtDockerConfig, compact)

	ind := func(v any) []byte { return indent(v, "   ") }
	linM := b.json(dockerManifest{SchemaVersion: 2, MediaType: mtDockerManifest, Config: docker(linCfg),
		Layers: []dockerDesc{docker(base), docker(lin)}}, mtDockerManifest, ind)
	winM := b.json(dockerManifest{SchemaVersion: 2, MediaType: mtDockerManifest, Config: docker(winCfg),
		Layers: []dockerDesc{docker(foreign), docker(base), docker(win)}}, mtDockerManifest, ind)

	linPlat := &v1.Platform{Architecture: "amd64", OS: "linux"}
	winPlat := &v1.Platform{Architecture: "amd64", OS: "windows", OSVersion: "10.0.17763.5329"}
	ld, wd := docker(linM), docker(winM)
	ld.Platform, wd.Platform = linPlat, winPlat
	list := b.json(dockerManifestList{SchemaVersion: 2, MediaType: mtDockerManifestList,
		Manifests: []dockerDesc{ld, wd}}, mtDockerManifestList, ind)

	winEntry := tagged(winM, "windows")
	winEntry.Platform = winPlat
	b.index(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []any{
		tagged(list, "multi", "io.containerd.image.name", "docker.io/library/app:multi"),
		winEntry,
	}})
	return b.layout("docker-schema2")
}

// buildkitMultiarch: what `docker buildx build --platform linux/amd64,linux/arm64
// --output type=oci` writes: one image index named in index.json (twice), over
// two platform manifests sharing a base layer and an attestation manifest
// (SLSA provenance as an in-toto statement) for each.
func buildkitMultiarch() Layout {
	b := newBuilder(digest.SHA256)
	base, baseID := b.layer("usr/share/base.txt", "buildkit shared base layer\n", v1.MediaTypeImageLayerGzip)
	ind := func(v any) []byte { return indent(v, "  ") }

	type plat struct {
		arch, variant string
	}
	var children []any
	var platforms []v1.Descriptor
	for _, p := range []plat{{"amd64", ""}, {"arm64", "v8"}} {
		own, ownID := b.layer("app/app-"+p.arch, "binary for "+p.arch+"\n", v1.MediaTypeImageLayerGzip)
		cfg := b.json(configJSON(image{arch: p.arch, variant: p.variant, os: "linux", cmd: "/app/app-" + p.arch,
			diffIDs: []digest.Digest{baseID, ownID},
			history: []string{"ADD base / # buildkit", "COPY app-" + p.arch + " /app/ # buildkit"}}), v1.MediaTypeImageConfig, ind)
		m := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, Config: cfg,
			Layers: []v1.Descriptor{base, own}}, v1.MediaTypeImageManifest, ind)
		m.Platform = &v1.Platform{Architecture: p.arch, OS: "linux", Variant: p.variant}
		platforms = append(platforms, m)
		children = append(children, m)
	}
	for i, m := range platforms {
		statement := map[string]any{
			"_type":         "https://in-toto.io/Statement/v0.1",
			"predicateType": "https://slsa.dev/provenance/v0.2",
			"subject": []map[string]any{{
				"name":   "pkg:docker/app@1.0?platform=linux%2F" + m.Platform.Architecture,
				"digest": map[string]string{"sha256": m.Digest.Encoded()},
			}},
			"predicate": map[string]any{
				"builder":   map[string]string{"id": ""},
				"buildType": "https://mobyproject.org/buildkit@v1",
				"metadata":  map[string]any{"buildFinishedOn": Created, "completeness": map[string]bool{"parameters": true}},
			},
		}
		prov := b.json(statement, mtInToto, compact)
		prov.Annotations = map[string]string{"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}
		cfg := b.json(map[string]any{
			"architecture": "unknown", "os": "unknown", "config": map[string]any{},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []digest.Digest{prov.Digest}},
		}, v1.MediaTypeImageConfig, compact)
		att := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, Config: cfg,
			Layers: []v1.Descriptor{prov}}, v1.MediaTypeImageManifest, ind)
		att.Annotations = map[string]string{
			"vnd.docker.reference.digest": platforms[i].Digest.String(),
			"vnd.docker.reference.type":   "attestation-manifest",
		}
		att.Platform = &v1.Platform{Architecture: "unknown", OS: "unknown"}
		children = append(children, att)
	}
	idx := b.json(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: children}, v1.MediaTypeImageIndex, ind)
	b.index(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []any{
		tagged(idx, "1.0", "io.containerd.image.name", "docker.io/library/app:1.0", v1.AnnotationCreated, Created),
		tagged(idx, "latest", "io.containerd.image.name", "docker.io/library/app:latest", v1.AnnotationCreated, Created),
	}})
	return b.layout("buildkit-multiarch")
}

// orasArtifacts: what oras (oras-go's OCI layout store) writes: an image, an
// artifact pushed with `oras push` (image manifest with artifactType, the
// empty config, files of any media type), an SBOM attached with `oras
// attach` (a referrer: subject, untagged entry), and a signature stored as
// the artifact manifest of the image-spec 1.1 release candidates, which
// oras-go 2.0 wrote.
func orasArtifacts() Layout {
	b := newBuilder(digest.SHA256)
	layer, layerID := b.layer("hello.txt", "hello from the subject image\n", v1.MediaTypeImageLayerGzip)
	cfg := b.json(configJSON(image{arch: "amd64", os: "linux", cmd: "/hello",
		diffIDs: []digest.Digest{layerID}, history: []string{"COPY hello.txt /"}}), v1.MediaTypeImageConfig, compact)
	img := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, Config: cfg,
		Layers: []v1.Descriptor{layer}}, v1.MediaTypeImageManifest, compact)
	subject := img

	empty := b.blob([]byte("{}"), mtEmpty)
	empty.Data = []byte("{}")
	titled := func(d v1.Descriptor, title string) v1.Descriptor {
		d.Annotations = map[string]string{v1.AnnotationTitle: title}
		return d
	}
	readme := titled(b.blob([]byte("# readme\nan artifact, not an image\n"), "text/plain"), "README.md")
	// JSON that looks like a manifest under an unknown media type: a leaf,
	// whose "layers" must not be followed (that blob does not exist).
	lookalike := titled(b.blob([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"mediaType":"application/octet-stream","digest":"sha256:`+digest.FromString("not in this layout").Encoded()+`","size":7}]}`),
		"application/vnd.example.manifest-lookalike+json"), "lookalike.json")
	chart := titled(b.blob([]byte("not really a helm chart, just its media type\n"), "application/vnd.cncf.helm.chart.content.v1.tar+gzip"), "chart.tgz")
	dataBin := titled(b.blob([]byte{0, 1, 2, 3, 0xfe, 0xff}, "application/vnd.oci.image.layer.v1.tar"), "data.bin") // oras push's default
	created := map[string]string{v1.AnnotationCreated: Created}
	const bundleType = "application/vnd.example.bundle.v1"
	art := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, ArtifactType: bundleType,
		Config: empty, Layers: []v1.Descriptor{readme, lookalike, chart, dataBin}, Annotations: created}, v1.MediaTypeImageManifest, compact)
	art.ArtifactType = bundleType

	sbom := titled(b.blob([]byte(`{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"hello","packages":[]}`), "application/spdx+json"), "sbom.spdx.json")
	ref := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, ArtifactType: "application/spdx+json",
		Config: empty, Layers: []v1.Descriptor{sbom}, Subject: &subject, Annotations: created}, v1.MediaTypeImageManifest, compact)
	ref.ArtifactType = "application/spdx+json"
	ref.Annotations = created

	sig := b.blob([]byte(`{"payload":"eyJ0YXJnZXRBcnRpZmFjdCI6e319","protected":"eyJhbGciOiJQUzI1NiJ9","signature":"c2lnbmF0dXJl"}`), "application/jose+json")
	legacyContent := compact(struct {
		MediaType    string            `json:"mediaType"`
		ArtifactType string            `json:"artifactType"`
		Blobs        []v1.Descriptor   `json:"blobs"`
		Subject      *v1.Descriptor    `json:"subject"`
		Annotations  map[string]string `json:"annotations"`
	}{mtArtifactManifest, "application/vnd.cncf.notary.signature", []v1.Descriptor{sig}, &subject,
		map[string]string{"org.opencontainers.artifact.created": Created}})
	legacy := b.blob(legacyContent, mtArtifactManifest)
	legacy.ArtifactType = "application/vnd.cncf.notary.signature"
	legacy.Data = legacyContent // a descriptor may embed its content

	b.index(ociIndex{SchemaVersion: 2, Manifests: []any{
		tagged(img, "hello"),
		tagged(art, "bundle", v1.AnnotationCreated, Created),
		ref,
		tagged(legacy, "hello.sig"),
	}})
	return b.layout("oras-artifacts")
}

// sha512Layout: two images whose every blob (manifests included) is named by
// a sha512 digest, sharing a layer.
func sha512Layout() Layout {
	b := newBuilder(digest.SHA512)
	base, baseID := b.layer("base.txt", "sha512 base layer\n", v1.MediaTypeImageLayerGzip)
	var entries []any
	for _, name := range []string{"one", "two"} {
		own, ownID := b.layer(name+".txt", name+"\n", v1.MediaTypeImageLayerGzip)
		cfg := b.json(configJSON(image{arch: "amd64", os: "linux", cmd: "/" + name,
			diffIDs: []digest.Digest{baseID, ownID}, history: []string{"ADD base.txt /", "ADD " + name + ".txt /"}}), v1.MediaTypeImageConfig, compact)
		m := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, Config: cfg,
			Layers: []v1.Descriptor{base, own}}, v1.MediaTypeImageManifest, compact)
		entries = append(entries, tagged(m, name))
	}
	b.index(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: entries})
	return b.layout("sha512")
}

// nestedIndex: index.json -> index "nested" -> (index -> two manifests, and
// a third manifest); one of the inner manifests is also tagged on its own
// (with its platform in index.json, as containerd writes it).
func nestedIndex() Layout {
	b := newBuilder(digest.SHA256)
	base, baseID := b.layer("base.txt", "nested base layer\n", v1.MediaTypeImageLayerGzip)
	man := func(arch string) v1.Descriptor {
		own, ownID := b.layer(arch+".txt", arch+"\n", v1.MediaTypeImageLayerGzip)
		cfg := b.json(configJSON(image{arch: arch, os: "linux", cmd: "/" + arch,
			diffIDs: []digest.Digest{baseID, ownID}, history: []string{"ADD base.txt /", "ADD " + arch + ".txt /"}}), v1.MediaTypeImageConfig, compact)
		m := b.json(ociManifest{SchemaVersion: 2, MediaType: v1.MediaTypeImageManifest, Config: cfg,
			Layers: []v1.Descriptor{base, own}}, v1.MediaTypeImageManifest, compact)
		m.Platform = &v1.Platform{Architecture: arch, OS: "linux"}
		return m
	}
	amd, arm, s390 := man("amd64"), man("arm64"), man("s390x")
	inner := b.json(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []any{amd, arm},
		Annotations: map[string]string{"com.example.group": "common"}}, v1.MediaTypeImageIndex, compact)
	top := b.json(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []any{inner, s390}}, v1.MediaTypeImageIndex, compact)
	b.index(ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []any{
		tagged(top, "nested"),
		tagged(arm, "arm64-only"),
	}})
	return b.layout("nested-index")
}

// noMediaType: an index.json without a top-level mediaType and with
// top-level annotations, whose first entry has no mediaType either (its
// manifest has none inside: both are optional in image-spec 1.0); that
// manifest shares a layer with the second, normally described image, whose
// entry carries a field no spec defines.
func noMediaType() Layout {
	b := newBuilder(digest.SHA256)
	shared, sharedID := b.layer("shared.txt", "layer shared by bare and normal\n", v1.MediaTypeImageLayerGzip)
	mk := func(name string, withMT bool) v1.Descriptor {
		own, ownID := b.layer(name+".txt", name+"\n", v1.MediaTypeImageLayerGzip)
		cfg := b.json(configJSON(image{arch: "amd64", os: "linux", cmd: "/" + name,
			diffIDs: []digest.Digest{sharedID, ownID}, history: []string{"ADD shared.txt /", "ADD " + name + ".txt /"}}), v1.MediaTypeImageConfig, compact)
		m := ociManifest{SchemaVersion: 2, Config: cfg, Layers: []v1.Descriptor{shared, own}}
		if withMT {
			m.MediaType = v1.MediaTypeImageManifest
		}
		return b.json(m, v1.MediaTypeImageManifest, compact)
	}
	bare := mk("bare", false)
	normal := mk("normal", true)
	var normalEntry map[string]any
	must(json.Unmarshal(compact(tagged(normal, "normal")), &normalEntry))
	normalEntry["io.example.vendor-extension"] = map[string]any{"pinned": true, "source": "mkfixtures"}
	bareEntry := struct { // no mediaType at all (v1.Descriptor would write "")
		Digest      digest.Digest     `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}{bare.Digest, bare.Size, map[string]string{v1.AnnotationRefName: "bare"}}
	b.index(ociIndex{SchemaVersion: 2, Manifests: []any{bareEntry, normalEntry},
		Annotations: map[string]string{"com.example.layout.owner": "ocistore fixtures", v1.AnnotationCreated: Created}})
	return b.layout("no-media-type")
}
