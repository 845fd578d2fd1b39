package imagedata

import (
	"bytes"
	"io"
	"testing"
)

func TestDeterministic(t *testing.T) {
	a, _ := io.ReadAll(New(1<<20+5, 1))
	b, _ := io.ReadAll(New(1<<20+5, 1))
	if len(a) != 1<<20+5 || !bytes.Equal(a, b) {
		t.Fatalf("len %d, equal %v", len(a), bytes.Equal(a, b))
	}
}

func BenchmarkRead(b *testing.B) {
	const size = 256 << 20
	b.SetBytes(size)
	buf := make([]byte, 1<<20)
	for b.Loop() {
		io.CopyBuffer(io.Discard, struct{ io.Reader }{New(size, 1)}, buf)
	}
}
