//go:build race

package chaos

// raceBuild makes the harness build the CLI with -race too.
const raceBuild = true
