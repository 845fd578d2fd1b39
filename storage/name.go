package storage

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// TempPrefix starts the name (or a path element of the name) of every temporary object a
// store writes during an upload. Object names may not use it, and List hides it.
const TempPrefix = ".podsnapshot-tmp"

// MaxNameLen is the longest object name in bytes (Cloud Storage's limit).
const MaxNameLen = 1024

// CheckName returns an error unless name is a valid object name: non-empty UTF-8 of at
// most MaxNameLen bytes, "/"-separated elements that are non-empty and not "." or "..",
// no NUL, CR or LF, and no element starting with TempPrefix.
func CheckName(name string) error {
	bad := func(why string) error { return fmt.Errorf("invalid object name %q: %s", name, why) }
	switch {
	case name == "":
		return bad("empty")
	case len(name) > MaxNameLen:
		return bad(fmt.Sprintf("longer than %d bytes", MaxNameLen))
	case !utf8.ValidString(name):
		return bad("not UTF-8")
	case strings.ContainsAny(name, "\x00\r\n"):
		return bad("contains NUL, CR or LF")
	}
	for _, el := range strings.Split(name, "/") {
		switch {
		case el == "":
			return bad("empty path element")
		case el == "." || el == "..":
			return bad("path element . or ..")
		case strings.HasPrefix(el, TempPrefix):
			return bad("path element starts with reserved " + TempPrefix)
		}
	}
	return nil
}

// IsTemp reports whether name is, or lies under, a temporary object name.
func IsTemp(name string) bool {
	for _, el := range strings.Split(name, "/") {
		if strings.HasPrefix(el, TempPrefix) {
			return true
		}
	}
	return false
}
