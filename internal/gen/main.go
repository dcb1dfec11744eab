package gen

import (
	"fmt"
	"os"
)

// Main is the main function of a command that writes generated files under
// the one directory its command line names (mkfixtures, mkdamaged): it calls
// write with that directory. A usage error exits with status 2, naming
// the command and dirHelp (which directory that is), a failure of write
// with status 1.
func Main(name, dirHelp string, write func(dir string) error) {
	if len(os.Args) != 2 || os.Args[1] == "" || os.Args[1][0] == '-' {
		fmt.Fprintf(os.Stderr, "usage: %s DIR   (DIR is %s)\n", name, dirHelp)
		os.Exit(2)
	}
	if err := write(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
