package server

import "testing"

func TestRouteOf(t *testing.T) {
	const d = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	tests := []struct {
		method, path, want string
	}{
		{"GET", "/v2/", routeBase},
		{"GET", "/v2", routeBase},
		{"GET", "/metrics", routeMetrics},
		{"GET", "/healthz", routeHealthz},

		{"GET", "/v2/a/manifests/latest", routeManifest},
		{"HEAD", "/v2/a/b/c/manifests/" + d, routeManifest},
		{"PUT", "/v2/foo/manifests/bar/manifests/v1", routeManifest},
		{"GET", "/v2/foo/blobs/bar/manifests/v1", routeManifest},
		{"GET", "/v2/a/manifests/", routeOther},     // no reference
		{"GET", "/v2/manifests/latest", routeOther}, // no name

		{"GET", "/v2/a/blobs/" + d, routeBlob},
		{"DELETE", "/v2/a/b/c/blobs/" + d, routeBlob},
		{"GET", "/v2/foo/blobs/bar/blobs/" + d, routeBlob},
		{"GET", "/v2/blobs/blobs/" + d, routeBlob},                   // the repository "blobs"
		{"GET", "/v2/x/blobs/uploads/blobs/" + d, routeBlob},         // the repository x/blobs/uploads
		{"GET", "/v2/a/blobs/uploads", routeBlob},                    // a blob "uploads" (an invalid digest)
		{"GET", "/v2/a/blobs/", routeOther},                          // no digest
		{"GET", "/v2/blobs/" + d, routeOther},                        // no name
		{"GET", "/v2/a//blobs/" + d, routeOther},                     // an empty name component
		{"GET", "/v2//a/blobs/" + d, routeOther},                     // an empty name component
		{"GET", "/v2/a/blobs/" + d + "/", routeOther},                // trailing slash
		{"GET", "/v2/foo/blobs/bar/blobs/uploads", routeBlob},        // GET: a blob named "uploads"
		{"POST", "/v2/foo/blobs/bar/blobs/uploads", routeUpload},     // POST without the final slash
		{"POST", "/v2/foo/blobs/bar/blobs/uploads/", routeUpload},    // start an upload in foo/blobs/bar
		{"PATCH", "/v2/foo/blobs/bar/blobs/uploads/u1", routeUpload}, // a session of foo/blobs/bar

		{"POST", "/v2/a/blobs/uploads/", routeUpload},
		{"POST", "/v2/a/b/c/blobs/uploads/", routeUpload},
		{"PATCH", "/v2/a/b/c/blobs/uploads/3f1c-aa", routeUpload},
		{"PUT", "/v2/a/blobs/uploads/3f1c-aa", routeUpload},
		{"GET", "/v2/a/blobs/uploads/3f1c-aa", routeUpload},
		{"DELETE", "/v2/a/blobs/uploads/3f1c-aa", routeUpload},
		{"POST", "/v2/blobs/uploads/", routeOther}, // no name
		{"POST", "/v2/blobs/uploads", routeOther},  // no name

		{"GET", "/v2/a/tags/list", routeTags},
		{"GET", "/v2/a/b/c/tags/list", routeTags},
		{"GET", "/v2/tags/tags/list", routeTags},
		{"GET", "/v2/a/tags/", routeOther},
		{"GET", "/v2/a/tags/list/", routeOther},
		{"GET", "/v2/tags/list", routeOther},

		{"GET", "/v2/a/referrers/" + d, routeReferrers},
		{"GET", "/v2/a/b/referrers/" + d, routeReferrers},
		{"GET", "/v2/a/referrers/", routeOther},

		{"GET", "/", routeOther},
		{"GET", "", routeOther},
		{"GET", "/v2/_catalog", routeOther},
		{"GET", "/v2/a", routeOther},
		{"GET", "/v2/a/b", routeOther},
		{"GET", "/v3/a/manifests/latest", routeOther},
		{"GET", "/v2x/a/manifests/latest", routeOther},
		{"GET", "/metrics/", routeOther},
		{"GET", "/healthz/x", routeOther},
		{"GET", "/v2/a/manifests/latest/extra", routeOther},
	}
	for _, tt := range tests {
		if got := routeOf(tt.method, tt.path); got != tt.want {
			t.Errorf("routeOf(%q, %q) = %q, want %q", tt.method, tt.path, got, tt.want)
		}
	}
}
