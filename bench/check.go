package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// checkReport is the result of the independent consistency check: it reads
// the layout's files only (no peer's code), walks the graph from index.json
// and lists the blob store.
type checkReport struct {
	IndexOK   bool   `json:"index_ok"`  // index.json parses
	IndexErr  string `json:"index_err"` // why not
	Entries   int    `json:"entries"`   // index.json entries
	Reachable int    `json:"reachable"` // distinct blobs reachable from index.json and present
	Dangling  int    `json:"dangling"`  // distinct digests referenced by the graph but missing
	Orphans   int    `json:"orphans"`   // blobs present but not reachable
	Stray     int    `json:"stray"`     // files under blobs/ that are not named by a digest
	Blobs     int    `json:"blobs"`     // blob files present
	Bytes     int64  `json:"bytes"`     // bytes of blob files present
	Lost      int    `json:"lost"`      // tags expected to remain that are gone
	Surviving int    `json:"surviving"` // tags expected to be gone that are still there
	tags      map[string]bool
}

var hexName = regexp.MustCompile(`^[a-f0-9]{32,128}$`)

// checkLayout checks dir. keep and gone are the tags expected present and
// absent (either may be nil).
func checkLayout(dir string, keep, gone []string) (*checkReport, error) {
	r := &checkReport{tags: map[string]bool{}}
	present := map[string]int64{} // digest -> size
	root := filepath.Join(dir, "blobs")
	algs, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	for _, a := range algs {
		if !a.IsDir() {
			r.Stray++
			continue
		}
		ents, err := os.ReadDir(filepath.Join(root, a.Name()))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || !hexName.MatchString(e.Name()) {
				r.Stray++
				continue
			}
			fi, err := e.Info()
			if err != nil {
				return nil, err
			}
			present[a.Name()+":"+e.Name()] = fi.Size()
			r.Blobs++
			r.Bytes += fi.Size()
		}
	}

	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	var ix manifest
	if err == nil {
		err = json.Unmarshal(raw, &ix)
	}
	if err != nil {
		r.IndexErr = err.Error()
		r.Orphans = len(present)
		r.Lost = len(keep)
		return r, nil
	}
	r.IndexOK = true
	r.Entries = len(ix.Manifests)

	reach := map[string]bool{}
	missing := map[string]bool{}
	var walk func(d desc, depth int)
	walk = func(d desc, depth int) {
		if reach[d.Digest] || missing[d.Digest] {
			return
		}
		if _, ok := present[d.Digest]; !ok {
			missing[d.Digest] = true
			return
		}
		reach[d.Digest] = true
		if depth > 8 || !isManifestType(d.MediaType) {
			return
		}
		alg, hx, _ := strings.Cut(d.Digest, ":")
		b, err := os.ReadFile(filepath.Join(root, alg, hx))
		if err != nil {
			return
		}
		var m manifest
		if json.Unmarshal(b, &m) != nil {
			return
		}
		if m.Config != nil {
			walk(*m.Config, depth+1)
		}
		for _, l := range m.Layers {
			walk(l, depth+1)
		}
		for _, c := range m.Manifests {
			walk(c, depth+1)
		}
		// subject: a weak reference, not followed.
	}
	for _, d := range ix.Manifests {
		if t := d.Annotations[refName]; t != "" {
			r.tags[t] = true
		}
		walk(d, 0)
	}
	r.Reachable = len(reach)
	r.Dangling = len(missing)
	for dg := range present {
		if !reach[dg] {
			r.Orphans++
		}
	}
	for _, t := range keep {
		if !r.tags[t] {
			r.Lost++
		}
	}
	for _, t := range gone {
		if r.tags[t] {
			r.Surviving++
		}
	}
	return r, nil
}

func isManifestType(mt string) bool {
	switch mt {
	case mtManifest, mtIndex,
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json":
		return true
	}
	return false
}

// short is the one-cell summary of a check.
func (r *checkReport) short() string {
	if r == nil {
		return "not checked"
	}
	if !r.IndexOK {
		return "index.json unreadable"
	}
	s := fmt.Sprintf("%d / %d", r.Dangling, r.Orphans)
	if r.Lost > 0 || r.Surviving > 0 {
		s += fmt.Sprintf(" (tags: %d lost, %d not deleted)", r.Lost, r.Surviving)
	}
	if r.Stray > 0 {
		s += fmt.Sprintf(" (%d stray files)", r.Stray)
	}
	return s
}
