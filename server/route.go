package server

import (
	"net/http"
	"strings"
)

// The routes routeOf returns: the label values of the route of a request in
// the metrics and the access log. The set is fixed, so that a label never
// carries a repository name, a tag or a digest.
const (
	routeBase      = "base"      // /v2/
	routeManifest  = "manifest"  // /v2/<name>/manifests/<reference>
	routeBlob      = "blob"      // /v2/<name>/blobs/<digest>
	routeUpload    = "upload"    // /v2/<name>/blobs/uploads/[<id>]
	routeTags      = "tags"      // /v2/<name>/tags/list
	routeReferrers = "referrers" // /v2/<name>/referrers/<digest>
	routeMetrics   = "metrics"   // /metrics
	routeHealthz   = "healthz"   // /healthz
	routeOther     = "other"     // anything else
)

// routeOf classifies a request by the distribution spec's path grammar into
// one of the fixed routes above.
//
// A repository name has slashes and may have a component that is also a
// keyword of the grammar (a repository foo/blobs/bar), so the path is read
// from its end: the last two or three components decide, and the ones
// before them must form a name (at least one component, none empty). An
// upload id is one path component (an id with a slash would make
// /v2/a/blobs/uploads/blobs/<digest> ambiguous; it is read as a blob of the
// repository a/blobs/uploads). The method decides one case only: a POST to
// /v2/<name>/blobs/uploads without the final slash starts an upload, any
// other method there asks for a blob whose "digest" is "uploads".
func routeOf(method, path string) string {
	switch path {
	case "/v2/", "/v2":
		return routeBase
	case "/metrics":
		return routeMetrics
	case "/healthz":
		return routeHealthz
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return routeOther
	}
	c := strings.Split(rest, "/")
	n := len(c)
	// nameBefore reports whether c[:i] is a repository name.
	nameBefore := func(i int) bool {
		if i < 1 {
			return false
		}
		for _, s := range c[:i] {
			if s == "" {
				return false
			}
		}
		return true
	}
	if n < 3 {
		return routeOther
	}
	last, kw := c[n-1], c[n-2]
	switch {
	case kw == "manifests" && last != "" && nameBefore(n-2):
		return routeManifest
	case kw == "blobs" && last == "uploads" && method == http.MethodPost && nameBefore(n-2):
		return routeUpload
	case kw == "blobs" && last != "" && nameBefore(n-2):
		return routeBlob
	case kw == "uploads" && n >= 4 && c[n-3] == "blobs" && nameBefore(n-3):
		return routeUpload // last == "": start an upload; otherwise the session <id>
	case kw == "tags" && last == "list" && nameBefore(n-2):
		return routeTags
	case kw == "referrers" && last != "" && nameBefore(n-2):
		return routeReferrers
	}
	return routeOther
}
