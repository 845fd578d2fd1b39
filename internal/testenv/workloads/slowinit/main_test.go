package main

import "testing"

// TestHotChunks: -hot-percent picks that share of the chunks, evenly spread, the same ones
// each time; verifyHot finds a bad page in a hot chunk and none outside them.
func TestHotChunks(t *testing.T) {
	for _, tc := range []struct{ percent, want int }{{10, 10}, {25, 25}, {50, 50}, {100, 100}, {1, 1}} {
		var hot []int
		for c := range 100 {
			if isHot(c, tc.percent) {
				hot = append(hot, c)
			}
		}
		if len(hot) != tc.want {
			t.Errorf("%d%%: %d of 100 chunks, want %d", tc.percent, len(hot), tc.want)
		}
		if tc.percent == 10 && (hot[0] != 9 || hot[1] != 19 || hot[9] != 99) {
			t.Errorf("10%%: chunks %v, want every 10th", hot)
		}
	}
	mem := make([]byte, 20*hotChunk)
	for p := range len(mem) / pageSize {
		fillPage(mem[p*pageSize:(p+1)*pageSize], uint64(p))
	}
	if got := verifyHot(mem, 10); got != "hot ok" {
		t.Fatal(got)
	}
	mem[3*hotChunk] ^= 1 // chunk 3: not among 10%'s
	if got := verifyHot(mem, 10); got != "hot ok" {
		t.Fatalf("a page outside the hot chunks was checked: %s", got)
	}
	if got := verify(mem); got != "memory corrupt at page 768 of 5120" {
		t.Fatal(got)
	}
	mem[19*hotChunk+5*pageSize] ^= 1 // chunk 19: hot
	if got := verifyHot(mem, 10); got != "hot corrupt at page 4869 of 5120" {
		t.Fatal(got)
	}
}
