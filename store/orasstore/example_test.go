package orasstore_test

import (
	"context"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/ocistore/ocistore/store"
	"github.com/ocistore/ocistore/store/orasstore"
)

// A pull-through cache in a few lines: a manifest the layout lacks is
// pulled from the upstream registry into it (under a lease, tagged last),
// then manifests and blobs are served from the layout, Range requests
// included (206).
func Example_pullThroughCache() {
	ctx := context.Background()
	s, _ := store.Open(ctx, "/var/cache/images", nil)
	defer s.Close()
	upstream, _ := remote.NewRepository("registry.example.com/library/app")

	resolve := func(ctx context.Context, tag string) (v1.Descriptor, error) {
		ref := upstream.Reference.Registry + "/" + upstream.Reference.Repository + ":" + tag
		if desc, err := s.Resolve(ctx, ref); err == nil {
			return desc, nil // a hit
		}
		dst := orasstore.New(s, nil) // one lease for the whole pull
		defer dst.Close(ctx)
		return oras.Copy(ctx, upstream, tag, dst, ref, oras.DefaultCopyOptions)
	}
	http.HandleFunc("GET /manifests/{tag}", func(w http.ResponseWriter, r *http.Request) {
		desc, err := resolve(r.Context(), r.PathValue("tag"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		serve(w, r, s, desc)
	})
	http.HandleFunc("GET /blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		desc, err := s.Stat(r.Context(), digest.Digest(r.PathValue("digest")))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		serve(w, r, s, desc)
	})
	_ = http.ListenAndServe("127.0.0.1:5000", nil)
}

func serve(w http.ResponseWriter, r *http.Request, s *store.Store, desc v1.Descriptor) {
	b, err := s.OpenBlob(r.Context(), desc) // random access: http.ServeContent answers Range with 206
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer b.Close()
	w.Header().Set("Content-Type", desc.MediaType)
	w.Header().Set("Docker-Content-Digest", desc.Digest.String())
	http.ServeContent(w, r, "", time.Time{}, b)
}
