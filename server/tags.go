package server

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/ocistore/ocistore/store"
)

// paginate answers a list request (the tags list, the catalog) with n/last
// pagination, as the distribution spec says: the names of all sorted and
// without duplicates, those after last, at most n, and a Link to the next
// page when there are more. path is the list's URL path.
func paginate(r *http.Request, w http.ResponseWriter, path string, all []string) ([]string, error) {
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return nil, apiErr(http.StatusBadRequest, codeUnsupported, "invalid n %q", v)
		}
	}
	slices.Sort(all)
	page := slices.Compact(all)
	if last := q.Get("last"); last != "" {
		i, found := slices.BinarySearch(page, last)
		if found {
			i++
		}
		page = page[i:]
	}
	if n >= 0 && n < len(page) {
		page = page[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {page[len(page)-1]}}
			w.Header().Set("Link", "<"+path+"?"+next.Encode()+`>; rel="next"`)
		}
	}
	if page == nil {
		page = []string{}
	}
	return page, nil
}

// tags is the tags list, with n/last pagination (distribution spec,
// "Listing Tags"). A repository without a tag is unknown (404
// NAME_UNKNOWN), as in distribution.
func (s *Server) tags(w http.ResponseWriter, r *http.Request, rt route) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod(r)
	}
	imgs, err := s.st.List(r.Context())
	if err != nil {
		return storeErr(err, codeNameUnknown, codeNameInvalid, "tags of %s", rt.name)
	}
	var all []string
	for _, im := range imgs {
		if repo, tag := store.SplitRef(im.Name); repo == rt.name && tag != "" {
			all = append(all, tag)
		}
	}
	if len(all) == 0 {
		return apiErr(http.StatusNotFound, codeNameUnknown, "repository %s has no tags", rt.name)
	}
	page, err := paginate(r, w, "/v2/"+rt.name+"/tags/list", all)
	if err != nil {
		return err
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
	page, err := paginate(r, w, "/v2/_catalog", repos)
	if err != nil {
		return err
	}
	return writeJSON(w, r, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{page})
}
