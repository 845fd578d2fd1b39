// Command slowinit imitates a workload with an expensive start: it fills -mib MiB of
// memory over -seconds seconds with a recognisable pattern, then prints "ready <time>".
// That is the kind of process pod snapshots exist for: restoring it must be faster than
// starting it, and its memory must come back intact.
//
// With -checkpoint it then asks gVisor to checkpoint the sandbox by writing "1" to
// /proc/gvisor/checkpoint and prints "checkpoint result: resume|restore|error". The result
// is read from the same open file it wrote to: gVisor decides at open time which
// checkpoint a file waits for, so a fresh open would wait for the next checkpoint, not
// this one. After that (or straight after "ready" without -checkpoint) it verifies the
// pattern ("memory ok" / "memory corrupt ...") and prints "count N" once a second
// forever, so a restored copy visibly continues. SIGUSR1 verifies the memory again at any
// time, which lets a test check a restore triggered from outside.
//
// With -hot-percent P (1..100) and -checkpoint, a copy that was restored ("checkpoint
// result: restore") first reads P% of its memory, spread over the whole region (of every
// 100 chunks of 1 MiB, P evenly spaced ones: every 10th for 10; visited in a shuffled
// order, fixed seed), checks it and prints
// "hot ok" (or "hot corrupt ..."), then verifies the rest as before: a workload whose
// first requests touch a part of its memory, the "ready" a restore that fetches those
// pages first (hot frames) reaches sooner. Without the flag nothing changes.
//
// Output lines (one per line, stdout, unbuffered):
//
//	slowinit: filling N MiB over D
//	ready <RFC 3339 time with nanoseconds>
//	checkpoint result: resume|restore|error     (only with -checkpoint)
//	hot ok | hot corrupt at page P of N         (only with -hot-percent, after a restore)
//	memory ok | memory corrupt at page P of N
//	count 0, count 1, ...
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/workloads/trigger"
)

const (
	pageSize = 4096
	// pageMagic starts every page of the filled memory, so the pattern can be found in a
	// memory dump (for example an uncompressed gVisor pages file) with grep.
	pageMagic = "PODSNAPSHOT-PAGE"
)

func main() {
	mib := flag.Int("mib", 64, "MiB of memory to fill")
	seconds := flag.Float64("seconds", 5, "seconds to spread the filling over")
	checkpoint := flag.Bool("checkpoint", false, "after ready, trigger a gVisor checkpoint through "+trigger.File)
	interval := flag.Duration("interval", time.Second, "time between two count lines")
	hotPercent := flag.Int("hot-percent", 0, "after a restore (with -checkpoint), check this percentage of the memory first, spread over it, and print \"hot ok\"; 0: none")
	flag.Parse()
	if *mib < 0 || *seconds < 0 || *interval <= 0 {
		fmt.Fprintln(os.Stderr, "slowinit: -mib and -seconds must not be negative, -interval must be positive")
		os.Exit(2)
	}
	if *hotPercent < 0 || *hotPercent > 100 {
		fmt.Fprintln(os.Stderr, "slowinit: -hot-percent must be within 0..100")
		os.Exit(2)
	}

	mem, err := allocate(*mib)
	if err != nil {
		fmt.Fprintf(os.Stderr, "slowinit: %v\n", err)
		os.Exit(1)
	}
	total := time.Duration(*seconds * float64(time.Second))
	fmt.Printf("slowinit: filling %d MiB over %v\n", *mib, total)
	fill(mem, total)
	fmt.Printf("ready %s\n", time.Now().UTC().Format(time.RFC3339Nano))

	if *checkpoint {
		result, err := trigger.Checkpoint()
		if err != nil {
			fmt.Fprintf(os.Stderr, "slowinit: checkpoint: %v\n", err)
			result = "error"
		}
		fmt.Printf("checkpoint result: %s\n", result)
		if result == "restore" && *hotPercent > 0 {
			fmt.Println(verifyHot(mem, *hotPercent))
		}
	}
	fmt.Println(verify(mem))

	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	t := time.NewTicker(*interval)
	defer t.Stop()
	for n := 0; ; {
		select {
		case <-usr1:
			fmt.Println(verify(mem))
		case <-t.C:
			fmt.Printf("count %d\n", n)
			n++
		}
	}
}

// allocate maps the memory outside the Go heap, so its size is exactly what was asked
// for and the garbage collector never touches or copies it.
func allocate(mib int) ([]byte, error) {
	if mib == 0 {
		return nil, nil
	}
	mem, err := syscall.Mmap(-1, 0, mib<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("mmap %d MiB: %w", mib, err)
	}
	return mem, nil
}

// fillPage writes the pattern of page number p: the magic, the page number, then words
// derived from the page number and their offset, so a page moved, zeroed or swapped with
// another is detected.
func fillPage(page []byte, p uint64) {
	copy(page, pageMagic)
	binary.LittleEndian.PutUint64(page[16:], p)
	for off := 24; off+8 <= len(page); off += 8 {
		binary.LittleEndian.PutUint64(page[off:], word(p, uint64(off)))
	}
}

func word(p, off uint64) uint64 {
	return (p*pageSize+off)*0x9E3779B97F4A7C15 ^ 0x50534e4150534854
}

// fill writes the pattern one MiB at a time and sleeps between chunks so the whole fill
// takes about total; the process is therefore observably "initialising" for that long.
func fill(mem []byte, total time.Duration) {
	const chunk = 1 << 20
	chunks := len(mem) / chunk
	start := time.Now()
	for c := 0; c < chunks; c++ {
		for off := c * chunk; off < (c+1)*chunk; off += pageSize {
			fillPage(mem[off:off+pageSize], uint64(off/pageSize))
		}
		due := start.Add(total * time.Duration(c+1) / time.Duration(chunks))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
	}
}

// verify checks every page against its pattern.
func verify(mem []byte) string {
	if p, bad := verifyPages(mem, 0, len(mem)/pageSize); bad {
		return fmt.Sprintf("memory corrupt at page %d of %d", p, len(mem)/pageSize)
	}
	return "memory ok"
}

// hotChunk is the size of the pieces verifyHot picks from.
const hotChunk = 1 << 20

// isHot reports whether chunk c is one of the percent% chunks verifyHot checks: for
// each c, floor((c+1)*percent/100) > floor(c*percent/100), which spreads them evenly
// (every 10th for 10, every other for 50, all for 100) and picks the same ones each time.
func isHot(c, percent int) bool {
	return (c+1)*percent/100 > c*percent/100
}

// verifyHot checks the hot chunks (isHot) against their pattern, in an order shuffled
// with a fixed seed (the same each run): a program's working set is not touched in
// address order (a heap, a model's layers, an interpreter's objects), and a workload
// that walked it upwards would only ride along gVisor's page loader, which loads in file
// order, hiding what a restore's page order costs.
func verifyHot(mem []byte, percent int) string {
	pages := len(mem) / pageSize
	per := hotChunk / pageSize
	var hot []int
	for c := 0; c*per < pages; c++ {
		if isHot(c, percent) {
			hot = append(hot, c)
		}
	}
	rng := rand.New(rand.NewPCG(0x686f74, 0x70616765)) // "hot", "page"
	rng.Shuffle(len(hot), func(i, j int) { hot[i], hot[j] = hot[j], hot[i] })
	for _, c := range hot {
		if p, bad := verifyPages(mem, c*per, min(pages, (c+1)*per)); bad {
			return fmt.Sprintf("hot corrupt at page %d of %d", p, pages)
		}
	}
	return "hot ok"
}

// verifyPages checks pages [first, end) and returns the first that does not hold its
// pattern, if any.
func verifyPages(mem []byte, first, end int) (int, bool) {
	var want [pageSize]byte
	for p := first; p < end; p++ {
		fillPage(want[:], uint64(p))
		if string(mem[p*pageSize:(p+1)*pageSize]) != string(want[:]) {
			return p, true
		}
	}
	return 0, false
}
