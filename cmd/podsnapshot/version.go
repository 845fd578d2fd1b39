package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/podsnapshot/podsnapshot/version"
)

var versionCommand = &command{
	name:    "version",
	usage:   "",
	summary: "print the version",
	help:    "Prints the version and revision (the shim's, set at build time) and the Go version.",
	run: func(_ context.Context, c *cli, args []string) error {
		pos, err := c.parse(c.flagSet(), args)
		if err != nil {
			return err
		}
		if len(pos) > 0 {
			return usagef("unexpected argument %q", pos[0])
		}
		_, err = fmt.Fprintf(c.stdout, "podsnapshot:\n  Version:    %s\n  Revision:   %s\n  Go version: %s\n", version.Version, version.Revision, runtime.Version())
		return err
	},
}
