// Command counter prints "count N" once a second, forever, starting at 0 or at the
// number given as its only argument.
//
// It is the simplest long-running workload for the e2e tests: a detached task that
// produces observable, monotonic output, so a test can tell a cold start (count starts
// again at the start value) from a restored one (count continues from where it was
// saved). Output goes straight to stdout without buffering, so a line is visible the
// moment it is printed.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	interval := flag.Duration("interval", time.Second, "time between two lines")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: counter [-interval D] [START]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 1 {
		flag.Usage()
		os.Exit(2)
	}
	var n int64
	if flag.NArg() == 1 {
		v, err := strconv.ParseInt(flag.Arg(0), 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "counter: bad start value %q: %v\n", flag.Arg(0), err)
			os.Exit(2)
		}
		n = v
	}
	if *interval <= 0 {
		fmt.Fprintf(os.Stderr, "counter: -interval must be positive, got %v\n", *interval)
		os.Exit(2)
	}
	// A ticker rather than sleep keeps the cadence steady; after a restore the ticker
	// simply fires again, and the count continues from the saved value.
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		fmt.Printf("count %d\n", n)
		n++
		<-t.C
	}
}
