// Command embedder is a program that embeds package store, as a cache
// would: it opens the layout DIR and deletes the images REF... in one
// transaction.
//
//	embedder DIR REF...
//
// Its test builds it with and without the build tag crashpoints and runs
// it with OCISTORE_CRASHPOINT set: a program built the default way never
// reads that variable (it has no crash points), one built with the tag is
// killed at the point named.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/ocistore/ocistore/store"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: embedder DIR REF...")
		os.Exit(2)
	}
	ctx := context.Background()
	s, err := store.Open(ctx, os.Args[1], nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedder:", err)
		os.Exit(1)
	}
	res, err := s.Delete(ctx, os.Args[2:]...)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedder:", err)
		os.Exit(1)
	}
	fmt.Printf("txn %d: freed %d blobs\n", res.Txn, len(res.Freed))
}
