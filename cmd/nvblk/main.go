// Command nvblk is the nvblk command line; see `nvblk --help`.
package main

import (
	"os"

	"github.com/nvblk/nvblk/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
