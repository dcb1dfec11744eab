package server

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/ocistore/ocistore/store"
)

// tags is the tags list, with n/last pagination (distribution spec,
// "Listing Tags"): tags in lexical order, the n after last, and a Link to
// the next page when there are more. A repository without a tag is
// unknown (404 NAME_UNKNOWN), as in distribution.
func (s *Server) tags(w http.ResponseWriter, r *http.Request, rt route) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod(r)
	}
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return apiErr(http.StatusBadRequest, codeUnsupported, "invalid n %q", v)
		}
	}
	last := q.Get("last")
	imgs, err := s.st.List(r.Context())
	if err != nil {
		return storeErr(err, codeNameUnknown, codeNameInvalid, "tags of %s", rt.name)
	}
	var all []string
	for _, im := range imgs {
		if im.Name == "" {
			continue
		}
		if repo, tag := store.SplitRef(im.Name); repo == rt.name && tag != "" {
			all = append(all, tag)
		}
	}
	if len(all) == 0 {
		return apiErr(http.StatusNotFound, codeNameUnknown, "repository %s has no tags", rt.name)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	page := all
	if last != "" {
		i, _ := slices.BinarySearch(page, last)
		for i < len(page) && page[i] <= last {
			i++
		}
		page = page[i:]
	}
	if n >= 0 && n < len(page) {
		page = page[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {page[len(page)-1]}}
			w.Header().Set("Link", `</v2/`+rt.name+`/tags/list?`+next.Encode()+`>; rel="next"`)
		}
	}
	if page == nil {
		page = []string{}
	}
	return writeJSON(w, r, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rt.name, page})
}

// catalog lists the repositories (those with a tag), with n/last
// pagination as the tags list.
func (s *Server) catalog(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod(r)
	}
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return apiErr(http.StatusBadRequest, codeUnsupported, "invalid n %q", v)
		}
	}
	last := q.Get("last")
	imgs, err := s.st.List(r.Context())
	if err != nil {
		return storeErr(err, codeNameUnknown, codeNameInvalid, "catalog")
	}
	var repos []string
	for _, im := range imgs {
		if repo, tag := store.SplitRef(im.Name); tag != "" && repo != "" && nameRE.MatchString(repo) {
			repos = append(repos, repo)
		}
	}
	slices.Sort(repos)
	repos = slices.Compact(repos)
	if last != "" {
		i, _ := slices.BinarySearch(repos, last)
		for i < len(repos) && repos[i] <= last {
			i++
		}
		repos = repos[i:]
	}
	if n >= 0 && n < len(repos) {
		repos = repos[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {repos[len(repos)-1]}}
			w.Header().Set("Link", `</v2/_catalog?`+next.Encode()+`>; rel="next"`)
		}
	}
	if repos == nil {
		repos = []string{}
	}
	return writeJSON(w, r, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{repos})
}
