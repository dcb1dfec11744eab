package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/server"
	"github.com/ocistore/ocistore/store"
)

// A registry over a layout, mounted in a program's own HTTP server: a
// blob pushed in one POST, then fetched.
func Example() {
	ctx := context.Background()
	tmp, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(tmp)
	st, err := store.Open(ctx, filepath.Join(tmp, "layout"), nil)
	if err != nil {
		panic(err)
	}
	defer st.Close()
	reg := server.New(st, nil) // Options: Upstreams for a pull-through cache, Metrics, UploadTTL
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	blob := "hello, registry"
	d := digest.FromString(blob)
	resp, err := http.Post(srv.URL+"/v2/team/app/blobs/uploads/?digest="+d.String(), "application/octet-stream", strings.NewReader(blob))
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println("push:", resp.Status, resp.Header.Get("Location"))
	resp, err = http.Head(srv.URL + "/v2/team/app/blobs/" + d.String())
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println("head:", resp.Status, resp.ContentLength)
	// Output:
	// push: 201 Created /v2/team/app/blobs/sha256:d4ceac3b8b759b17b86618c4165bb23a506c157c81a034147cf8e3510691aa1c
	// head: 200 OK 15
}
