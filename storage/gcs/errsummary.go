package gcs

import (
	"errors"
	"fmt"
)

// manyErrors is several failures of one kind said in one line: the first, and how many
// more there were. errors.Is and errors.As see them all. An upload cut off from its
// store fails every part and every delete of its cleanup alike; errors.Join made that one
// 4 KB log line of 27 copies of the same cause.
type manyErrors struct {
	errs []error
	kind string // what each one was, plural: "deletes of temporary objects failed"
}

// summarize returns nil for no errors, the error itself for one, and a *manyErrors for
// more.
func summarize(errs []error, kind string) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return &manyErrors{errs: errs, kind: kind}
}

func (e *manyErrors) Error() string {
	return fmt.Sprintf("%v (and %d more %s)", e.errs[0], len(e.errs)-1, e.kind)
}

func (e *manyErrors) Unwrap() []error { return e.errs }

// cleanupFailed is an upload's failure with the failure of the cleanup after it: the
// upload's cause, and how many temporary objects were not deleted (podsnapshot gc deletes
// them once they are older than its --orphan-ttl).
type cleanupFailed struct {
	err, cleanup error
}

func (e *cleanupFailed) Error() string {
	n := 1
	var m *manyErrors
	if errors.As(e.cleanup, &m) {
		n = len(m.errs)
	}
	return fmt.Sprintf("%v (and %d temporary objects of the upload were not deleted, left for podsnapshot gc)", e.err, n)
}

func (e *cleanupFailed) Unwrap() []error { return []error{e.err, e.cleanup} }
