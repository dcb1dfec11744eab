// Command gendemo writes a synthetic OCI image layout, as another tool
// would (no ocistore journal), for `make demo` and benchmarks.
//
//	gendemo -images 300 -repos 30 DIR
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ocistore/ocistore/internal/gen"
)

func main() {
	var s gen.Spec
	flag.IntVar(&s.Images, "images", 300, "number of tagged images")
	flag.IntVar(&s.BaseSets, "base-sets", 10, "shared base layer sets")
	flag.IntVar(&s.Repos, "repos", 0, "spread tags over this many repositories (0: tags img0, img1, ...)")
	flag.IntVar(&s.LayerSize, "layer-size", 4096, "bytes per layer")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	s.Seed = *seed
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gendemo [flags] DIR")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	if _, err := os.Stat(dir); err == nil {
		fmt.Fprintf(os.Stderr, "gendemo: %s exists; remove it first\n", dir)
		os.Exit(1)
	}
	st, err := gen.Write(dir, s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendemo:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s: %d images, %d blobs, %d bytes (%d shared base sets of 3 layers, 2 own layers per image)\n", dir, st.Images, st.Blobs, st.Bytes, s.BaseSets)
}
