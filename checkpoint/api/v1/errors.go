package v1

import (
	"encoding/json"
	"fmt"
	"reflect"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Error texts quote what a document says, and a document may be a megabyte: a value is
// quoted up to MaxQuotedValue bytes, a field error's detail (which may quote the value
// again) up to maxDetail, and a DocumentError's cause up to maxCause, each cut ending in
// "…", so that a hostile or broken file costs a log line, not its size, at every reload.
const (
	// MaxQuotedValue is the most bytes of a value an error quotes.
	MaxQuotedValue = 64
	maxDetail      = 512
	maxCause       = 4096
)

// Truncate returns s when it has at most n bytes, else its first n bytes (cut back to a
// UTF-8 character boundary) followed by "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// ShortenFieldErrors returns copies of errs whose values are cut to MaxQuotedValue bytes
// (a string as a string; another non-numeric value as its JSON text, when that is
// longer) and whose details are cut to maxDetail bytes.
func ShortenFieldErrors(errs field.ErrorList) field.ErrorList {
	out := make(field.ErrorList, len(errs))
	for i, e := range errs {
		c := *e
		c.BadValue = shortValue(e.BadValue)
		c.Detail = Truncate(e.Detail, maxDetail)
		out[i] = &c
	}
	return out
}

func shortValue(v any) any {
	if v == nil {
		return v
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String:
		if rv.Len() > MaxQuotedValue {
			return Truncate(rv.String(), MaxQuotedValue)
		}
		return v
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return v
	}
	if _, ok := v.(field.OmitValueType); ok {
		return v
	}
	text, err := json.Marshal(v)
	if err != nil {
		text = []byte(fmt.Sprintf("%#v", v))
	}
	if len(text) > MaxQuotedValue {
		return Truncate(string(text), MaxQuotedValue)
	}
	return v
}
