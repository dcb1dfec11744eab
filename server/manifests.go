package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

// isDigest reports whether ref is a digest reference (it has a ':'; a
// tag never does).
func isDigest(ref string) bool { return strings.Contains(ref, ":") }

// parseDigest parses a digest of the URL: a 400 DIGEST_INVALID when it is
// not one the store can hold.
func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil || !d.Algorithm().Available() {
		return "", apiErr(http.StatusBadRequest, codeDigestInvalid, "invalid digest %q", s)
	}
	return d, nil
}

// refName is the index.json name of the tag of a repository.
func refName(repo, tag string) string { return repo + ":" + tag }

func (s *Server) manifest(w http.ResponseWriter, r *http.Request, rt route) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return s.getManifest(w, r, rt)
	case http.MethodPut:
		return s.putManifest(w, r, rt)
	case http.MethodDelete:
		return s.deleteManifest(w, r, rt)
	}
	return errMethod(r)
}

// resolveManifest finds the manifest ref names in the repository.
func (s *Server) resolveManifest(r *http.Request, rt route) (v1.Descriptor, error) {
	ref := rt.arg
	if isDigest(ref) {
		d, err := parseDigest(ref)
		if err != nil {
			return v1.Descriptor{}, err
		}
		desc, err := s.st.Resolve(r.Context(), d.String())
		if err != nil {
			return desc, storeErr(err, codeManifestUnknown, codeManifestInvalid, "manifest %s", d)
		}
		// Resolve finds any manifest in blobs/; the registry has those the
		// layout keeps. The blob of a manifest whose PUT a crash stopped
		// before its transaction is not one (GC removes it): a client
		// that asks whether its push landed must hear 404, and push again.
		held, err := s.st.Held(r.Context(), d)
		if err != nil {
			return desc, storeErr(err, codeManifestUnknown, codeManifestInvalid, "manifest %s", d)
		}
		if !held {
			return desc, apiErr(http.StatusNotFound, codeManifestUnknown, "manifest %s is not in the registry (an unreferenced blob of the layout)", d)
		}
		return desc, nil
	}
	if !tagRE.MatchString(ref) {
		return v1.Descriptor{}, apiErr(http.StatusBadRequest, codeManifestInvalid, "invalid tag %q", ref)
	}
	desc, err := s.st.Resolve(r.Context(), refName(rt.name, ref))
	if err != nil {
		return desc, storeErr(err, codeManifestUnknown, codeManifestInvalid, "manifest %s:%s", rt.name, ref)
	}
	return desc, nil
}

func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	if s.pull != nil {
		if _, err := s.pull.manifest(r, rt); err != nil {
			return err
		}
	}
	desc, err := s.resolveManifest(r, rt)
	if err != nil {
		return err
	}
	if !store.IsManifest(desc.MediaType) {
		return apiErr(http.StatusNotFound, codeManifestUnknown, "%s is not a manifest", desc.Digest)
	}
	b, err := s.st.FetchManifest(r.Context(), desc)
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "manifest %s", desc.Digest)
	}
	h := w.Header()
	h.Set("Content-Type", desc.MediaType)
	h.Set("Docker-Content-Digest", desc.Digest.String())
	etag := `"` + desc.Digest.String() + `"`
	h.Set("ETag", etag)
	if match(r.Header.Values("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(b)
	}
	return nil
}

// match reports whether an If-None-Match header names etag (or is "*").
func match(values []string, etag string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			t = strings.TrimPrefix(t, "W/")
			if t == "*" || t == etag {
				return true
			}
		}
	}
	return false
}

func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	body, err := io.ReadAll(io.LimitReader(r.Body, s.opts.MaxManifestSize+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, codeManifestInvalid, "read the manifest: %v", err)
	}
	if int64(len(body)) > s.opts.MaxManifestSize {
		return apiErr(http.StatusRequestEntityTooLarge, codeSizeInvalid, "manifest larger than %d bytes", s.opts.MaxManifestSize)
	}
	var head struct {
		MediaType string          `json:"mediaType"`
		Subject   *v1.Descriptor  `json:"subject"`
		Schema    json.RawMessage `json:"schemaVersion"`
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return apiErr(http.StatusBadRequest, codeManifestInvalid, "manifest is not JSON: %v", err)
	}
	mt := r.Header.Get("Content-Type")
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = strings.TrimSpace(mt[:i])
	}
	if mt == "" {
		mt = head.MediaType
	}
	if !store.IsManifest(mt) {
		return apiErr(http.StatusBadRequest, codeManifestInvalid, "media type %q is not a manifest or index", mt)
	}
	if head.MediaType != "" && head.MediaType != mt {
		return apiErr(http.StatusBadRequest, codeManifestInvalid, "Content-Type %s, but the manifest says %s", mt, head.MediaType)
	}
	o := store.ManifestOptions{MediaType: mt}
	var want digest.Digest
	if isDigest(rt.arg) {
		if want, err = parseDigest(rt.arg); err != nil {
			return err
		}
		o.Algorithm = want.Algorithm()
		if got := want.Algorithm().FromBytes(body); got != want {
			return apiErr(http.StatusBadRequest, codeDigestInvalid, "manifest digest is %s, not %s", got, want)
		}
		o.Untagged = true
	} else {
		if !tagRE.MatchString(rt.arg) {
			return apiErr(http.StatusBadRequest, codeManifestInvalid, "invalid tag %q", rt.arg)
		}
		o.Tags = []string{refName(rt.name, rt.arg)}
	}
	// Tags as parameters of a push by digest (distribution spec v1.1+).
	for _, t := range r.URL.Query()["tag"] {
		if !tagRE.MatchString(t) {
			return apiErr(http.StatusBadRequest, codeManifestInvalid, "invalid tag %q", t)
		}
		o.Tags = append(o.Tags, refName(rt.name, t))
	}
	var desc v1.Descriptor
	err = s.txn("put_manifest", func() (err error) {
		desc, err = s.st.PutManifestWith(ctx, body, o)
		return err
	})
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "put manifest %s/%s", rt.name, rt.arg)
	}
	h := w.Header()
	h.Set("Location", "/v2/"+rt.name+"/manifests/"+desc.Digest.String())
	h.Set("Docker-Content-Digest", desc.Digest.String())
	if head.Subject != nil {
		h.Set("OCI-Subject", head.Subject.Digest.String())
	}
	for _, t := range r.URL.Query()["tag"] {
		h.Add("OCI-Tag", t)
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// deleteManifest removes a tag (the manifest stays, by digest), or a
// manifest from the repository: its tags there, and, when no other
// repository names it, every entry of it (untagged ones too) and what only
// it used, with its referrers.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	if !isDigest(rt.arg) {
		if !tagRE.MatchString(rt.arg) {
			return apiErr(http.StatusBadRequest, codeManifestInvalid, "invalid tag %q", rt.arg)
		}
		if err := s.txn("tag", func() error { return s.st.Untag(ctx, refName(rt.name, rt.arg)) }); err != nil {
			return storeErr(err, codeManifestUnknown, codeManifestInvalid, "delete tag %s:%s", rt.name, rt.arg)
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	d, err := parseDigest(rt.arg)
	if err != nil {
		return err
	}
	imgs, err := s.st.List(ctx)
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "delete manifest %s", d)
	}
	var mine []string
	others, untagged := false, false
	for _, im := range imgs {
		if im.Descriptor.Digest != d {
			continue
		}
		switch {
		case im.Name == "":
			untagged = true
		case store.Repository(im.Name) == rt.name:
			mine = append(mine, im.Name)
		default:
			others = true
		}
	}
	switch {
	case others && len(mine) > 0:
		err = s.txn("tag", func() error { return s.st.Untag(ctx, mine...) })
	case others:
		err = fmt.Errorf("manifest %s is not in repository %s: %w", d, rt.name, store.ErrNotFound)
	case len(mine) > 0 || untagged:
		err = s.txn("delete", func() error {
			_, err := s.st.Delete(ctx, d.String())
			return err
		})
	default:
		err = fmt.Errorf("manifest %s: %w", d, store.ErrNotFound)
		if ok, xerr := s.st.Exists(ctx, v1.Descriptor{Digest: d, Size: -1}); xerr == nil && ok {
			// A manifest that only an index holds (a platform manifest):
			// it goes with that index.
			err = apiErr(http.StatusMethodNotAllowed, codeUnsupported, "manifest %s is not an entry of the layout (an index holds it): delete that index", d)
		}
	}
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "delete manifest %s", d)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (s *Server) referrers(w http.ResponseWriter, r *http.Request, rt route) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod(r)
	}
	d, err := parseDigest(rt.arg)
	if err != nil {
		return err
	}
	at := r.URL.Query().Get("artifactType")
	descs, err := s.st.Referrers(r.Context(), d, at)
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "referrers of %s", d)
	}
	if descs == nil {
		descs = []v1.Descriptor{}
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	idx := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: descs}
	idx.SchemaVersion = 2
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(idx); err != nil {
		return err
	}
	return writeJSON(w, r, v1.MediaTypeImageIndex, json.RawMessage(bytes.TrimSpace(buf.Bytes())))
}
