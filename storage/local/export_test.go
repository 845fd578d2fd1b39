package local

// WithoutOpenat2 makes the store resolve names element by element, as on a kernel without
// openat2, until the returned func is called.
func WithoutOpenat2() (restore func()) {
	was := noOpenat2.Swap(true)
	return func() { noOpenat2.Store(was) }
}
