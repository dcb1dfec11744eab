//go:build race

package interop

// raceBuild makes TestMain build the CLI with -race too.
const raceBuild = true
