package shim

import "testing"

func TestHasBundle(t *testing.T) {
	gofer := []string{"runsc-gofer", "--root=/r", "gofer", "--bundle", "/b/pod1", "--io-fds=9", "pod1"}
	if !hasBundle(gofer, "/b/pod1") || hasBundle(gofer, "/b/pod") || !hasBundle([]string{"x", "--bundle=/b/p"}, "/b/p") {
		t.Fatal("hasBundle")
	}
}
