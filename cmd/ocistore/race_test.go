//go:build race

package main

// raceBuild makes TestMain build the CLI with -race too.
const raceBuild = true
