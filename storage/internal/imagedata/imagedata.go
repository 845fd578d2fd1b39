// Package imagedata generates memory-image-like test data on the fly: runs of 4 KiB pages
// that are zero, compressible text, or random, in proportions like a checkpointed
// process's pages-file. The stream is deterministic for a seed and uses constant memory.
package imagedata

import (
	"encoding/binary"
	"io"
	"math/bits"
	"math/rand/v2"
)

// PageSize is the page size in bytes.
const PageSize = 4096

// Shares of pages, in percent: the rest are random (already compressed or encrypted
// data, which does not compress).
const (
	ZeroPercent = 45
	TextPercent = 35
)

var words = []string{
	"the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be",
	"at", "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which",
	"one", "you", "were", "her", "all", "she", "there", "would", "their", "we", "him", "been",
	"has", "when", "who", "will", "more", "no", "if", "out", "so", "said", "what", "up", "its",
	"about", "into", "than", "them", "can", "only", "other", "new", "some", "could", "time",
	"these", "pointer", "0x7ffd3a2c", "kernel", "{\"key\":", "null,", "GET /index.html",
}

// Reader yields size bytes of page data.
type Reader struct {
	size, off int64
	rng       *rand.Rand
	wy        uint64 // wyrand state for random pages
	page      [PageSize]byte
	pageLeft  int // unread bytes of page
	kind      int // of the current run: 0 zero, 1 text, 2 random
	runLeft   int // pages left in the run
}

// New returns a Reader of size bytes for seed.
func New(size int64, seed uint64) *Reader {
	return &Reader{size: size, rng: rand.New(rand.NewPCG(seed, 0x5eed)), wy: seed}
}

func (r *Reader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.size-r.off)]
	n := 0
	for n < len(p) {
		if r.pageLeft == 0 {
			r.nextPage()
		}
		c := copy(p[n:], r.page[PageSize-r.pageLeft:])
		r.pageLeft -= c
		n += c
	}
	r.off += int64(n)
	return n, nil
}

// nextPage fills r.page, starting a new run of 1-64 pages of one kind when needed.
func (r *Reader) nextPage() {
	if r.runLeft == 0 {
		switch x := r.rng.IntN(100); {
		case x < ZeroPercent:
			r.kind = 0
		case x < ZeroPercent+TextPercent:
			r.kind = 1
		default:
			r.kind = 2
		}
		r.runLeft = 1 + r.rng.IntN(64)
	}
	r.runLeft--
	r.pageLeft = PageSize
	switch r.kind {
	case 0:
		clear(r.page[:])
	case 1:
		r.textPage()
	default:
		r.randomPage()
	}
}

// randomPage fills the page with wyrand output: not cryptographic, but no compressor
// finds structure in it, and it is fast enough not to slow the measurement.
func (r *Reader) randomPage() {
	for i := 0; i < PageSize; i += 8 {
		r.wy += 0xa0761d6478bd642f
		hi, lo := bits.Mul64(r.wy, r.wy^0xe7037ed1a0b428db)
		binary.LittleEndian.PutUint64(r.page[i:], hi^lo)
	}
}

// textPage fills the page with words picked at random, 8 bytes each (a word of up to 7
// letters and padding), 8 words per random number: text-like data a compressor shrinks
// about 3-5 times, generated at several GB/s.
func (r *Reader) textPage() {
	for i := 0; i < PageSize; i += 64 {
		x := r.rng.Uint64()
		for j := range 8 {
			binary.LittleEndian.PutUint64(r.page[i+8*j:], wordSlots[byte(x>>(8*j))])
		}
	}
}

// wordSlots maps a byte to a word padded to 8 bytes, as a little-endian uint64.
var wordSlots = func() (t [256]uint64) {
	for i := range t {
		w := []byte(words[(i*7)%len(words)] + "        ")
		w[7] = ' '
		if i%5 == 0 {
			w[7] = '\n'
		}
		t[i] = binary.LittleEndian.Uint64(w)
	}
	return t
}()
